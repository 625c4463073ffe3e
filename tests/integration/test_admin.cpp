// The admin API through real sockets (issue 6): auth and roles, every endpoint's success and
// failure answers, trips that take effect on every worker, change control, the
// hash-chained audit log (tampered with in the SQLite file), and /metrics through promtool.
#include "tests/support/fake_upstream.hpp"
#include "tests/support/keep_alive_tls.hpp"
#include "tests/support/proxy_fixture.hpp"
#include "tests/support/sqlite_exec.hpp"
#include "store/database.hpp"

#include <gtest/gtest.h>

#include <thread>

#include <boost/beast/http/write.hpp>

#include <openssl/evp.h>
#include <simdjson.h>
#include <sqlite3.h>

#include <poll.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>

using namespace bb::test;
using namespace std::chrono_literals;
namespace http = boost::beast::http;

namespace {

std::string sha256_hex(std::string_view s) {
    unsigned char d[32];
    unsigned int n = 0;
    EVP_Digest(s.data(), s.size(), d, &n, EVP_sha256(), nullptr);
    std::string out;
    char buf[3];
    for (int i = 0; i < 32; ++i) {
        std::snprintf(buf, sizeof buf, "%02x", d[i]);
        out += buf;
    }
    return out;
}

std::string admin_config(std::uint16_t upstream_port, const std::string& dir, int limit = 1000) {
    return "{\"workers\": 2, \"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}],"
           "\"limits\": {\"drain_timeout\": \"2s\"},"
           "\"admin\": {\"address\": \"127.0.0.1:0\", \"tokens\": ["
           "{\"name\": \"vera-viewer\", \"sha256\": \"" + sha256_hex("view-token") + "\", \"role\": \"viewer\"},"
           "{\"name\": \"ollie-oncall\", \"sha256\": \"" + sha256_hex("op-token") + "\", \"role\": \"operator\"},"
           "{\"name\": \"ada-admin\", \"sha256\": \"" + sha256_hex("admin-token") + "\", \"role\": \"admin\"}]},"
           "\"store\": {\"path\": \"" + dir + "/bb.db\"},"
           "\"upstreams\": [{\"name\": \"sendgrid\", \"url\": \"http://127.0.0.1:" + std::to_string(upstream_port) + "\"}],"
           "\"routes\": [{\"name\": \"mail-send\", \"match\": {\"path_prefix\": \"/v3/mail/send\"}, \"upstream\": \"sendgrid\"}],"
           "\"failure_modes\": [{\"id\": \"volume-spike\", \"title\": \"Send volume spike\", \"severity\": \"sev2\"}],"
           "\"breakers\": [{\"id\": \"campaign-volume\", \"action\": \"pause\", \"reset\": \"manual\"},"
           "{\"id\": \"held\", \"action\": \"quarantine\", \"reset\": \"manual\", \"scope\": \"breaker\"}],"
           "\"rules\": [{\"id\": \"recipients\", \"route\": \"mail-send\", \"key\": [\"header:x-campaign-id\"],"
           "\"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\", \"limit\": " + std::to_string(limit) +
           ", \"failure_mode\": \"volume-spike\", \"trips\": \"campaign-volume\"},"
           "{\"id\": \"hold-tagged\", \"route\": \"mail-send\", \"match\": {\"headers\": {\"x-hold\": \"*\"}},"
           "\"measure\": {\"per_request\": \"requests\"}, \"limit\": 0, \"failure_mode\": \"volume-spike\", \"trips\": \"held\"}],"
           "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
}

response admin(std::uint16_t port, http::verb method, const std::string& target, const std::string& token,
               const std::string& body = "") {
    std::vector<std::pair<std::string, std::string>> h;
    if (!token.empty()) {
        h.emplace_back("authorization", "Bearer " + token);
    }
    if (!body.empty()) {
        h.emplace_back("content-type", "application/json");
    }
    return http_request(port, method, target, body, h);
}

std::string code_of(const response& r) {
    simdjson::dom::parser p;
    auto doc = p.parse(r.body());
    std::string_view c;
    if (doc.error() || doc["error"]["code"].get(c)) {
        return {};
    }
    return std::string{c};
}

response send_mail(std::uint16_t port, const std::string& campaign, int recipients = 1, bool hold = false,
                   const std::string& target = "/v3/mail/send") {
    std::string to;
    for (int i = 0; i < recipients; ++i) {
        to += std::string{i ? "," : ""} + std::to_string(i);
    }
    std::vector<std::pair<std::string, std::string>> h{
        {"content-type", "application/json"}, {"x-campaign-id", campaign}, {"authorization", "Bearer SG.secret-key"}};
    if (hold) {
        h.emplace_back("x-hold", "1");
    }
    return http_request(port, http::verb::post, target, "{\"to\":[" + to + "]}", h);
}

struct admin_fixture {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    std::string dir = temp_dir();
    proxy_instance bb{admin_config(up.port(), dir)};
    std::uint16_t port() { return bb.server().admin_port(); }
};

// The value of an unlabelled metric in /metrics, "missing" when it is not there.
std::string metric_value(std::uint16_t admin_port, const std::string& name) {
    const auto text = admin(admin_port, http::verb::get, "/metrics", "view-token").body();
    const auto at = text.find("\n" + name + " ");
    return at == std::string::npos ? std::string{"missing"}
                                   : text.substr(at + name.size() + 2, text.find('\n', at + 1) - at - name.size() - 2);
}

}  // namespace

// A scraper's keep-alive connection waiting for its next request does not hold a shutdown
// for the admin API's 30 s idle timeout (a supervisor's kill at the end of its grace period
// would come before the final saves): stop() closes it.
TEST(admin_api, an_idle_admin_connection_does_not_hold_the_shutdown) {
    admin_fixture f;
    raw_client scraper{f.port(), std::chrono::seconds{20}};
    scraper.send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    ASSERT_EQ(scraper.read_response().result_int(), 200u);
    auto stopped = std::async(std::launch::async, [&] { f.bb.stop(); });
    // The drain ends at once (no data-plane connection); the admin connection's timeout is 30 s.
    ASSERT_EQ(stopped.wait_for(std::chrono::seconds{15}), std::future_status::ready)
        << "the shutdown waited for the idle admin connection";
    EXPECT_EQ(f.bb.exit_code(), 0);
    EXPECT_TRUE(scraper.closed_by_server());
}

// A HEAD is answered with the GET's head and no body: a scraper's HEAD on a kept-alive
// connection used to get the whole exposition, which it then read as the next response.
TEST(admin_api, a_head_request_gets_no_body) {
    admin_fixture f;
    raw_client c{f.port()};
    for (const char* target : {"/metrics", "/healthz"}) {
        c.send(std::string{"HEAD "} + target + " HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer view-token\r\n\r\n");
        const auto head = c.read_response(true);
        EXPECT_EQ(head.result_int(), 200u) << target;
        EXPECT_TRUE(head.body().empty()) << target;
        EXPECT_NE(head[http::field::content_length], "0") << target << ": the GET's length";
        // The next answer on the connection is read whole: nothing of a body was left before it.
        c.send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
        const auto next = c.read_response();
        EXPECT_EQ(next.result_int(), 200u) << target;
        EXPECT_EQ(next.body(), "{\"status\":\"ok\"}\n") << target;
    }
}

// A client that leaves mid-body, before anything is answered, is counted as one that left
// (and gets its access log line), not forgotten.
TEST(admin_api, a_client_that_leaves_mid_body_is_counted) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = admin_config(up.port(), dir);
    const std::string off = "\"access_log\": \"off\"";
    cfg.replace(cfg.find(off), off.size(), "\"access_log\": \"" + dir + "/access.log\"");
    proxy_instance bb{cfg};
    const std::uint16_t admin_port = bb.server().admin_port();
    ASSERT_EQ(metric_value(admin_port, "breakerbox_client_aborts_total"), "0");
    {
        raw_client c{bb.port()};
        c.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"to\":");
        c.close();
    }
    std::string aborts;
    for (int i = 0; i < 500 && (aborts = metric_value(admin_port, "breakerbox_client_aborts_total")) != "1"; ++i) {
        pollfd none{};
        ::poll(&none, 0, 10);  // the worker notices the close on its own time: bounded polling
    }
    EXPECT_EQ(aborts, "1");
    EXPECT_EQ(up.request_count(), 0u);
    bb.stop();  // flushes the log
    std::ifstream in{dir + "/access.log"};
    const std::string log{std::istreambuf_iterator<char>{in}, {}};
    EXPECT_NE(log.find("\"method\":\"POST\",\"target\":\"/v3/mail/send\""), std::string::npos) << log;
    EXPECT_NE(log.find("\"status\":499,\"decision\":\"rejected\",\"code\":\"client_closed\""), std::string::npos)
        << log;
}

// The breaker view says its scope (PRODUCT.md): which breakers take a key.
TEST(admin_api, a_breaker_says_its_scope) {
    admin_fixture f;
    const auto keyed = admin(f.port(), http::verb::get, "/v1/breakers/campaign-volume", "view-token");
    EXPECT_NE(keyed.body().find("\"scope\":\"key\""), std::string::npos) << keyed.body();
    const auto wide = admin(f.port(), http::verb::get, "/v1/breakers/held", "view-token");
    EXPECT_NE(wide.body().find("\"scope\":\"breaker\""), std::string::npos) << wide.body();
}

TEST(admin_api, health_and_readiness_need_no_token) {
    admin_fixture f;
    EXPECT_EQ(admin(f.port(), http::verb::get, "/healthz", "").result_int(), 200u);
    EXPECT_EQ(admin(f.port(), http::verb::get, "/readyz", "").result_int(), 200u);
}

TEST(admin_api, tokens_and_roles) {
    admin_fixture f;
    auto none = admin(f.port(), http::verb::get, "/v1/breakers", "");
    EXPECT_EQ(none.result_int(), 401u);
    EXPECT_EQ(code_of(none), "unauthorized");
    EXPECT_FALSE(none[http::field::www_authenticate].empty());
    EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/breakers", "wrong-token").result_int(), 401u);
    EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/breakers", "view-token").result_int(), 200u);
    auto trip = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/spring/trip", "view-token",
                      R"({"reason":"looks wrong"})");
    EXPECT_EQ(trip.result_int(), 403u);
    EXPECT_EQ(code_of(trip), "forbidden");
    EXPECT_NE(trip.body().find("viewer"), std::string::npos);
}

// A token removed by a config change stops working on a connection that was already open
// and waiting for its next request (the identity is looked up when the request arrives).
TEST(admin_api, a_removed_token_ends_on_an_open_connection) {
    admin_fixture f;
    raw_client viewer{f.port()};
    const std::string get = "GET /v1/breakers HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer view-token\r\n\r\n";
    viewer.send(get);
    EXPECT_EQ(viewer.read_response().result_int(), 200u);
    std::string without = admin_config(f.up.port(), f.dir);
    const std::string vera = "{\"name\": \"vera-viewer\", \"sha256\": \"" + sha256_hex("view-token") + "\", \"role\": \"viewer\"},";
    ASSERT_NE(without.find(vera), std::string::npos);
    without.erase(without.find(vera), vera.size());
    const auto applied = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"vera left\",\"config\":" + without + "}");
    ASSERT_EQ(applied.result_int(), 200u) << applied.body();
    viewer.send(get);
    const auto after = viewer.read_response();
    EXPECT_EQ(after.result_int(), 401u) << after.body();
}

// What the config's own reading warns of is answered by an apply (a dry run too) and logged,
// as at a start: an agent added on a listener that also serves requests without a key. Apart
// from `warnings` (what did not take effect: breakerctl fails an apply that has those).
TEST(admin_api, an_apply_answers_the_configs_warnings) {
    admin_fixture f;
    std::string cfg = admin_config(f.up.port(), f.dir);
    cfg.insert(cfg.rfind('}'), ", \"agents\": [{\"id\": \"bot\", \"key_sha256\": [\"" + sha256_hex("bot-key") + "\"]}]");
    for (const char* target : {"/v1/config?dry_run=1", "/v1/config"}) {
        const auto applied = admin(f.port(), http::verb::post, target, "admin-token",
                                   "{\"reason\":\"a new agent\",\"config\":" + cfg + "}");
        ASSERT_EQ(applied.result_int(), 200u) << applied.body();
        EXPECT_NE(applied.body().find("\"config_warnings\":[\"listeners[0].require_agent: agents are configured"),
                  std::string::npos)
            << target << ": " << applied.body();
        EXPECT_EQ(applied.body().find("\"warnings\""), std::string::npos) << "nothing was left unapplied: " << applied.body();
    }
}

// A TLS setting the change makes that cannot be built (a key that is not the certificate's)
// refuses the apply whole: 400 with its path, no version stored, nothing of it running.
TEST(admin_api, an_apply_whose_tls_cannot_be_built_is_refused) {
    admin_fixture f;
    std::string cfg = admin_config(f.up.port(), f.dir);
    const std::string listener = "{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}";
    ASSERT_NE(cfg.find(listener), std::string::npos);
    const std::string certs = BB_TEST_CERTS_DIR;
    cfg.replace(cfg.find(listener), listener.size(),
                "{\"name\": \"t\", \"address\": \"127.0.0.1:0\", \"tls\": {\"cert_file\": \"" + certs +
                    "/server.pem\", \"key_file\": \"" + certs + "/wrong-name.key\"}}");
    const auto before = f.bb.server().current_config();
    const auto stored_before = admin(f.port(), http::verb::get, "/v1/config", "admin-token").body();
    const auto refused = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"tls\",\"config\":" + cfg + "}");
    EXPECT_EQ(refused.result_int(), 400u) << refused.body();
    EXPECT_EQ(code_of(refused), "invalid_config");
    EXPECT_NE(refused.body().find("listeners[0].tls: TLS key"), std::string::npos) << refused.body();
    EXPECT_EQ(f.bb.server().current_config(), before);
    EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/config", "admin-token").body(), stored_before)
        << "a version was stored";
}

// An apply that fails after its version was stored (here: the rules' saved counts cannot be
// read when the first rules arrive) changes nothing: the breakers stay where they are, so an
// operator's forced_open survives it and the next apply alike, the caller is told, and the
// running config is stored again so that a restart runs what runs.
TEST(admin_api, an_apply_that_cannot_restore_the_counts_changes_nothing) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string with_rules = admin_config(up.port(), dir);
    std::string without_rules = with_rules;
    // The new config brings a breaker too: the running ones move to a new registry.
    const std::string breakers = "\"breakers\": [";
    with_rules.insert(with_rules.find(breakers) + breakers.size(), "{\"id\": \"extra\", \"action\": \"pause\"},");
    const auto rules_at = without_rules.find("\"rules\": [");
    const auto log_at = without_rules.find("\"log\":");
    without_rules.replace(rules_at, log_at - rules_at, "\"rules\": [],");
    proxy_instance bb{without_rules};
    const std::uint16_t port = bb.server().admin_port();
    auto forced = admin(port, http::verb::post, "/v1/breakers/held/mode", "op-token",
                        R"({"mode":"forced_open","reason":"hold everything"})");
    ASSERT_EQ(forced.result_int(), 200u) << forced.body();
    auto exec = [&](const char* sql) { sqlite_exec(dir + "/bb.db", sql); };
    auto held_mode = [&] {
        const auto snap = bb.server().breakers()->get("held", bb.server().now());
        return snap ? std::string{bb::breakers::to_string(snap->md)} : std::string{"none"};
    };
    exec("ALTER TABLE rule_meters RENAME TO rule_meters_away");
    const auto refused = admin(port, http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"caps\",\"config\":" + with_rules + "}");
    EXPECT_EQ(refused.result_int(), 503u) << refused.body();
    EXPECT_EQ(code_of(refused), "apply_failed");
    EXPECT_NE(refused.body().find("the running config is stored again as version 2"), std::string::npos)
        << refused.body();
    EXPECT_TRUE(bb.server().current_config()->rules->rules.empty()) << "the refused config runs";
    EXPECT_EQ(held_mode(), "forced_open");
    const auto latest = bb.server().db()->config_version(0);
    ASSERT_TRUE(latest);
    EXPECT_EQ(latest->first, 2);
    EXPECT_EQ(latest->second, bb.server().current_config()->source_json) << "a restart would run another config";

    exec("ALTER TABLE rule_meters_away RENAME TO rule_meters");
    const auto applied = admin(port, http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"caps, again\",\"config\":" + with_rules + "}");
    ASSERT_EQ(applied.result_int(), 200u) << applied.body();
    EXPECT_FALSE(bb.server().current_config()->rules->rules.empty());
    EXPECT_EQ(held_mode(), "forced_open") << "the operator's force was lost to the refused apply";
    EXPECT_EQ(send_mail(bb.port(), "spring", 1, true)["x-breakerbox-decision"], "quarantined");
    EXPECT_EQ(up.request_count(), 0u);
}

// What needs a restart keeps its running value and is named in the answer; the rest of the
// change (here the store's retention beside a new worker count) applies.
TEST(admin_api, an_apply_says_what_waits_for_a_restart_and_applies_the_rest) {
    admin_fixture f;
    std::string next = admin_config(f.up.port(), f.dir);
    next.replace(next.find("\"workers\": 2"), 12, "\"workers\": 1");
    const std::string store = "\"store\": {\"path\": \"" + f.dir + "/bb.db\"";
    next.replace(next.find(store), store.size(), store + ", \"retention\": \"2h\"");
    const auto applied = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"tune\",\"config\":" + next + "}");
    ASSERT_EQ(applied.result_int(), 200u) << applied.body();
    EXPECT_NE(applied.body().find("\"warnings\":[\"listeners (other than require_agent and forward_proxy.passthrough) and workers are fixed until restart"),
              std::string::npos)
        << applied.body();
    const auto running = f.bb.server().current_config();
    EXPECT_EQ(running->workers, 2u);
    EXPECT_EQ(running->store.retention, std::chrono::hours{2});
    // The Idempotency-Key header: held requests are found by its value, so a retry read
    // under another name would go live beside its hold.
    next = admin_config(f.up.port(), f.dir);
    next.replace(next.find(store), store.size(), store + ", \"idempotency_header\": \"X-Dedupe\"");
    const auto renamed = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"rename\",\"config\":" + next + "}");
    ASSERT_EQ(renamed.result_int(), 200u) << renamed.body();
    EXPECT_NE(renamed.body().find("store.idempotency_header and store.idempotency_keys are fixed until restart"), std::string::npos) << renamed.body();
    EXPECT_EQ(f.bb.server().current_config()->store.idempotency_header, "Idempotency-Key");
    // A new store.path says what the next start will not find.
    next = admin_config(f.up.port(), f.dir);
    next.replace(next.find(store), store.size(), "\"store\": {\"path\": \"" + f.dir + "/moved.db\"");
    const auto moved = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                             "{\"reason\":\"move\",\"config\":" + next + "}");
    ASSERT_EQ(moved.result_int(), 200u) << moved.body();
    EXPECT_NE(moved.body().find("store.path changed to " + f.dir + "/moved.db, not applied: a start that runs with it "
                                "opens that store, not " + f.dir + "/bb.db, and restores nothing from this one"),
              std::string::npos)
        << moved.body();
    EXPECT_EQ(f.bb.server().current_config()->store.path, f.dir + "/bb.db");
}

// A config without the admin section would take the running admin API's tokens away (every
// call 401, the revert included) and, stored, start the next process without one: through the
// API it is refused naming the field; from the file (SIGHUP) the admin API runs on with its
// settings until restart, and says so.
TEST(admin_api, removing_the_admin_section_does_not_lock_operators_out) {
    admin_fixture f;
    std::string next = admin_config(f.up.port(), f.dir);
    const auto from = next.find("\"admin\": {");
    const auto to = next.find("\"store\":");
    ASSERT_NE(from, std::string::npos);
    ASSERT_NE(to, std::string::npos);
    next.erase(from, to - from);
    for (const char* target : {"/v1/config?dry_run=true", "/v1/config"}) {
        const auto refused = admin(f.port(), http::verb::post, target, "admin-token",
                                   "{\"reason\":\"template\",\"config\":" + next + "}");
        EXPECT_EQ(refused.result_int(), 400u) << target << ": " << refused.body();
        EXPECT_NE(refused.body().find("\"field\":\"config.admin\""), std::string::npos) << refused.body();
    }
    auto parsed = bb::parse_config(next);
    ASSERT_TRUE(parsed.errors.empty()) << parsed.errors.to_string();
    const auto warnings = f.bb.server().apply_config(parsed.cfg);
    EXPECT_TRUE(std::any_of(warnings.begin(), warnings.end(),
                            [](const std::string& w) { return w.find("the admin section was removed") == 0; }));
    EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/breakers", "op-token").result_int(), 200u)
        << "the running admin API lost its tokens";
}

// Settings fixed until restart keep their running values in the running config: it says
// what runs (the admin API's address, the log settings), not what was asked for.
TEST(admin_api, settings_fixed_until_restart_keep_their_running_values) {
    admin_fixture f;
    const auto before = f.bb.server().current_config();
    std::string next = admin_config(f.up.port(), f.dir);
    const std::string addr = "\"address\": \"127.0.0.1:0\", \"tokens\"";
    ASSERT_NE(next.find(addr), std::string::npos);
    next.replace(next.find(addr), addr.size(), "\"address\": \"127.0.0.1:9\", \"tokens\"");
    const std::string level = "\"level\": \"warn\"";
    ASSERT_NE(next.find(level), std::string::npos);
    next.replace(next.find(level), level.size(), "\"level\": \"debug\"");
    auto parsed = bb::parse_config(next);
    ASSERT_TRUE(parsed.errors.empty()) << parsed.errors.to_string();
    const auto warnings = f.bb.server().apply_config(parsed.cfg);
    EXPECT_TRUE(std::any_of(warnings.begin(), warnings.end(),
                            [](const std::string& w) { return w.find("admin.address") == 0; }));
    const auto now = f.bb.server().current_config();
    EXPECT_EQ(now->admin.port, before->admin.port);
    EXPECT_EQ(now->log.level, before->log.level);
}

// log.access_log is opened at the next start: a file this process could not create or write
// is refused now, naming the field, not found when the restart fails.
TEST(admin_api, an_access_log_the_next_start_could_not_open_is_refused) {
    admin_fixture f;
    std::string next = admin_config(f.up.port(), f.dir);
    const std::string off = "\"access_log\": \"off\"";
    ASSERT_NE(next.find(off), std::string::npos);
    next.replace(next.find(off), off.size(), "\"access_log\": \"" + f.dir + "/bb.db/access.log\"");
    const auto refused = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"log\",\"config\":" + next + "}");
    EXPECT_EQ(refused.result_int(), 400u) << refused.body();
    EXPECT_NE(refused.body().find("log.access_log: \\\"" + f.dir + "/bb.db/access.log\\\" cannot be created: " + f.dir +
                                  "/bb.db is not a directory"),
              std::string::npos)
        << refused.body();
    next = admin_config(f.up.port(), f.dir);
    next.replace(next.find(off), off.size(), "\"access_log\": \"" + f.dir + "/logs/access.log\"");
    const auto applied = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"log\",\"config\":" + next + "}");
    EXPECT_EQ(applied.result_int(), 200u) << applied.body();
}

// Input that would be misread is refused naming what is wrong, before anything is done
// (the refusal is audited, no "started" entry): a query parameter where none is read (a bulk release with
// `?dry_run=1` released for real), a reason that is only invisible characters or a
// document, an expiry on `auto` (recorded, never set), a page limit out of range (bent
// to 100 or 1000 before), a `config` that is not an object, an empty ticket.
TEST(admin_api, input_that_would_be_misread_is_refused) {
    admin_fixture f;
    auto field_of = [](const response& r) {
        const auto at = r.body().find("\"field\":\"");
        return at == std::string::npos ? std::string{} : r.body().substr(at + 9, r.body().find('"', at + 9) - at - 9);
    };
    auto dry = admin(f.port(), http::verb::post, "/v1/quarantine/release?dry_run=1", "op-token",
                     R"({"reason":"preview","filter":{"breaker":"held"}})");
    EXPECT_EQ(dry.result_int(), 400u) << dry.body();
    EXPECT_EQ(field_of(dry), "dry_run");
    auto timed = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/x/mode?expires_in=10m", "op-token",
                       R"({"mode":"forced_closed","reason":"x"})");
    EXPECT_EQ(timed.result_int(), 400u) << timed.body();
    EXPECT_EQ(field_of(timed), "expires_in");
    auto versioned = admin(f.port(), http::verb::get, "/v1/config?version=3", "op-token");
    EXPECT_EQ(versioned.result_int(), 400u);
    EXPECT_EQ(field_of(versioned), "version");
    for (const char* blank : {"\u00a0", "\u200b \u3000", "\ufeff "}) {
        auto r = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/x/trip", "op-token",
                       "{\"reason\":\"" + std::string{blank} + "\"}");
        EXPECT_EQ(r.result_int(), 400u) << r.body();
        EXPECT_EQ(code_of(r), "missing_field");
    }
    auto essay = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/x/trip", "op-token",
                       "{\"reason\":\"" + std::string(3000, 'x') + "\"}");
    EXPECT_EQ(essay.result_int(), 400u);
    EXPECT_EQ(field_of(essay), "reason");
    auto auto_expiry = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/x/mode", "op-token",
                             R"({"mode":"auto","expires_in":"10m","reason":"x"})");
    EXPECT_EQ(auto_expiry.result_int(), 400u);
    EXPECT_EQ(field_of(auto_expiry), "expires_in");
    for (const char* target : {"/v1/quarantine?limit=0", "/v1/quarantine?limit=5000", "/v1/audit?limit=0",
                                     "/v1/audit?limit=1001"}) {
        auto r = admin(f.port(), http::verb::get, target, "view-token");
        EXPECT_EQ(r.result_int(), 400u) << target;
        EXPECT_EQ(field_of(r), "limit") << target;
    }
    auto bulk_limit = admin(f.port(), http::verb::post, "/v1/quarantine/discard", "op-token",
                            R"({"reason":"x","filter":{"breaker":"held","limit":5000}})");
    EXPECT_EQ(bulk_limit.result_int(), 400u) << bulk_limit.body();
    EXPECT_EQ(field_of(bulk_limit), "filter.limit");
    auto text_config = admin(f.port(), http::verb::post, "/v1/config", "admin-token", R"({"config":"{}","reason":"x"})");
    EXPECT_EQ(text_config.result_int(), 400u);
    EXPECT_EQ(code_of(text_config), "bad_field");
    auto empty_ticket = admin(f.port(), http::verb::post, "/v1/quarantine//release", "op-token", R"({"reason":"x"})");
    EXPECT_EQ(empty_ticket.result_int(), 404u);
    // Refused, each is in the audit log as such, and nothing was done.
    const auto audit = admin(f.port(), http::verb::get, "/v1/audit?limit=1000", "admin-token").body();
    EXPECT_EQ(audit.find("\"result\":\"started\""), std::string::npos) << audit;
    const auto b = f.bb.server().breakers()->get("campaign-volume/x", f.bb.server().now());
    EXPECT_TRUE(!b || (b->st == bb::breakers::state::closed && b->md == bb::breakers::mode::automatic));
}

// An agent whose id is also an action's name (`mode`, `trip`): its kill switch is read with
// a GET and flipped with the action after it, like any other.
TEST(admin_api, an_agents_kill_switch_is_read_whatever_the_agents_name) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = admin_config(up.port(), dir);
    cfg.insert(cfg.rfind('}'), ", \"agents\": [{\"id\": \"mode\", \"key_sha256\": [\"" + sha256_hex("mode-key") + "\"]}]");
    proxy_instance bb{cfg};
    const auto port = bb.server().admin_port();
    auto read = admin(port, http::verb::get, "/v1/breakers/agent/mode", "view-token");
    EXPECT_EQ(read.result_int(), 200u) << read.body();
    EXPECT_NE(read.body().find("\"agent/mode\""), std::string::npos) << read.body();
    auto trip = admin(port, http::verb::post, "/v1/breakers/agent/mode/trip", "op-token", R"({"reason":"runaway"})");
    EXPECT_EQ(trip.result_int(), 200u) << trip.body();
    read = admin(port, http::verb::get, "/v1/breakers/agent%2Fmode", "view-token");
    EXPECT_EQ(read.result_int(), 200u) << read.body();
    EXPECT_NE(read.body().find("runaway"), std::string::npos) << read.body();
}

// A key no rule produces (undecoded bytes, past the key bound) is refused, naming the key,
// not answered 200 for an instance no request consults: a listed `caf%E9` is `caf%25E9` in
// the URL, and a reset of `caf%E9` (decoded: a Latin-1 byte) left the real one open.
TEST(admin_api, a_key_no_rule_produces_is_refused) {
    admin_fixture f;
    for (const std::string& key : {std::string{"caf%E9"}, std::string{"%C2%85"}, std::string(300, 'k')}) {
        for (const char* act : {"/reset", "/trip"}) {
            auto r = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/" + key + act, "op-token",
                           R"({"reason":"r"})");
            EXPECT_EQ(r.result_int(), 400u) << key << act << ": " << r.body();
            EXPECT_EQ(code_of(r), "bad_field") << key;
            EXPECT_NE(r.body().find("\"field\":\"key\""), std::string::npos) << r.body();
        }
    }
    // The escaped spelling, as listed, reaches the instance.
    auto ok = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/caf%25E9/trip", "op-token",
                    R"({"reason":"r"})");
    EXPECT_EQ(ok.result_int(), 200u) << ok.body();
    EXPECT_TRUE(f.bb.server().breakers()->get("campaign-volume/caf%E9", f.bb.server().now()));
}

TEST(admin_api, mutations_need_post_a_json_body_and_a_reason) {
    admin_fixture f;
    auto get = admin(f.port(), http::verb::get, "/v1/breakers/campaign-volume/x/trip", "op-token");
    EXPECT_EQ(get.result_int(), 405u);
    EXPECT_EQ(get[http::field::allow], "POST");
    auto post_list = admin(f.port(), http::verb::post, "/v1/breakers", "op-token", R"({"reason":"x"})");
    EXPECT_EQ(post_list.result_int(), 405u);
    auto bad_json = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/x/trip", "op-token", "{nope");
    EXPECT_EQ(bad_json.result_int(), 400u);
    EXPECT_EQ(code_of(bad_json), "bad_json");
    auto no_reason = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/x/trip", "op-token", R"({})");
    EXPECT_EQ(no_reason.result_int(), 400u);
    EXPECT_EQ(code_of(no_reason), "missing_field");
    EXPECT_NE(no_reason.body().find("\"field\":\"reason\""), std::string::npos);
    auto bad_mode = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/x/mode", "op-token",
                          R"({"mode":"sideways","reason":"r"})");
    EXPECT_EQ(bad_mode.result_int(), 400u);
    EXPECT_NE(bad_mode.body().find("\"field\":\"mode\""), std::string::npos);
    auto unknown = admin(f.port(), http::verb::post, "/v1/breakers/ghost/trip", "op-token", R"({"reason":"r"})");
    EXPECT_EQ(unknown.result_int(), 404u);
    auto big = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/x/trip", "op-token",
                     "{\"reason\":\"" + std::string(70 * 1024, 'x') + "\"}");
    EXPECT_EQ(big.result_int(), 413u);
    EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/nothing", "op-token").result_int(), 404u);
    // A mode's expiry is bounded (a huge one would overflow the clock arithmetic).
    auto forever = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/x/mode", "op-token",
                         R"({"reason":"r","mode":"forced_open","expires_in":"300000d"})");
    EXPECT_EQ(forever.result_int(), 400u) << forever.body();
    EXPECT_NE(forever.body().find("\"field\":\"expires_in\""), std::string::npos) << forever.body();
}

TEST(admin_api, a_trip_contains_the_next_request_on_every_worker_and_reset_releases_it) {
    admin_fixture f;
    EXPECT_EQ(send_mail(f.bb.port(), "spring").result_int(), 202u);
    auto trip = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/spring/trip", "op-token",
                      R"({"reason":"agent loop suspected"})");
    ASSERT_EQ(trip.result_int(), 200u) << trip.body();
    EXPECT_NE(trip.body().find("\"state\":\"open\""), std::string::npos) << trip.body();
    EXPECT_NE(trip.body().find("\"actor\":\"ollie-oncall\""), std::string::npos) << trip.body();
    for (int i = 0; i < 8; ++i) {  // fresh connections spread over both workers
        auto res = send_mail(f.bb.port(), "spring");
        EXPECT_EQ(res.result_int(), 503u);
        EXPECT_EQ(res["x-breakerbox-decision"], "paused");
    }
    EXPECT_EQ(send_mail(f.bb.port(), "autumn").result_int(), 202u);
    auto list = admin(f.port(), http::verb::get, "/v1/breakers", "view-token");
    EXPECT_NE(list.body().find("\"instance\":\"campaign-volume/spring\""), std::string::npos) << list.body();
    auto one = admin(f.port(), http::verb::get, "/v1/breakers/campaign-volume/spring", "view-token");
    EXPECT_EQ(one.result_int(), 200u);
    EXPECT_NE(one.body().find("\"reason\":\"agent loop suspected\""), std::string::npos);
    auto reset = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/spring/reset", "op-token",
                       R"({"reason":"checked"})");
    EXPECT_EQ(reset.result_int(), 200u);
    EXPECT_EQ(send_mail(f.bb.port(), "spring").result_int(), 202u);
    auto mode = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/mode", "op-token",
                      R"({"mode":"forced_open","expires_in":"10m","reason":"maintenance"})");
    EXPECT_EQ(mode.result_int(), 200u) << mode.body();
    EXPECT_EQ(send_mail(f.bb.port(), "anything").result_int(), 503u);
}

// Ids in a path reach logs, alerts and the store: a decoded control character would forge a
// log line, so the path is refused before anything is audited or done. A '+' in a path is
// itself (a key "a+b"), not a space.
TEST(admin_api, a_path_with_control_characters_is_refused_and_a_plus_is_a_plus) {
    admin_fixture f;
    const auto forged = admin(f.port(), http::verb::post,
                              "/v1/breakers/campaign-volume/x%0Aaudit:%20entry%2099%20appended/trip", "op-token",
                              R"({"reason":"forge"})");
    EXPECT_EQ(forged.result_int(), 400u) << forged.body();
    EXPECT_EQ(code_of(forged), "bad_target");
    for (const auto& snap : f.bb.server().breakers()->snapshot(f.bb.server().now())) {
        EXPECT_EQ(snap.instance.find('\n'), std::string::npos) << "an instance was made: " << snap.instance;
    }
    const auto plus = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/a+b/trip", "op-token",
                            R"({"reason":"hold"})");
    ASSERT_EQ(plus.result_int(), 200u) << plus.body();
    EXPECT_TRUE(f.bb.server().breakers()->get("campaign-volume/a+b", f.bb.server().now()));
    // Both audit records of the act (intent, outcome) name it as it was read; the refused
    // one keeps its path as sent, with no line break decoded into the record.
    const auto log = admin(f.port(), http::verb::get, "/v1/audit?limit=1000", "admin-token");
    EXPECT_EQ(log.body().find("campaign-volume/a b/trip"), std::string::npos) << log.body();
    EXPECT_NE(log.body().find("campaign-volume/a+b/trip"), std::string::npos) << log.body();
    EXPECT_EQ(log.body().find("x\\naudit"), std::string::npos) << log.body();
}

TEST(admin_api, a_key_contained_by_the_overflow_instance_is_shown_there_and_not_reset_by_its_own_name) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const std::string dir = temp_dir();
    std::string cfg = admin_config(up.port(), dir);
    const std::string wide = R"("id": "campaign-volume", "action": "pause", "reset": "manual")";
    ASSERT_NE(cfg.find(wide), std::string::npos);
    cfg.replace(cfg.find(wide), wide.size(), wide + R"(, "max_instances": 1)");
    proxy_instance bb{cfg};
    const auto port = bb.server().admin_port();
    auto post = [&](const std::string& target, const std::string& body) {
        return admin(port, http::verb::post, target, "op-token", body);
    };
    ASSERT_EQ(post("/v1/breakers/campaign-volume/spring/trip", R"({"reason":"loop"})").result_int(), 200u);
    // Full: the next key's trip goes to the overflow instance, which then contains every key
    // without an instance of its own.
    auto over = post("/v1/breakers/campaign-volume/autumn/trip", R"({"reason":"loop too"})");
    ASSERT_EQ(over.result_int(), 200u) << over.body();
    EXPECT_NE(over.body().find("\"instance\":\"campaign-volume/_overflow\""), std::string::npos) << over.body();
    EXPECT_EQ(send_mail(bb.port(), "winter").result_int(), 503u);

    auto one = admin(port, http::verb::get, "/v1/breakers/campaign-volume/winter", "view-token");
    EXPECT_NE(one.body().find("\"instance\":\"campaign-volume/_overflow\""), std::string::npos) << one.body();
    EXPECT_NE(one.body().find("\"state\":\"open\""), std::string::npos) << one.body();
    for (const std::string act : {"reset", "mode"}) {
        auto r = post("/v1/breakers/campaign-volume/winter/" + act,
                      act == "mode" ? R"({"mode":"forced_closed","reason":"mine"})" : R"({"reason":"mine"})");
        EXPECT_EQ(r.result_int(), 409u) << act << ": " << r.body();
        EXPECT_EQ(code_of(r), "contained_by_overflow") << r.body();
        EXPECT_NE(r.body().find("campaign-volume/_overflow"), std::string::npos) << r.body();
    }
    EXPECT_EQ(send_mail(bb.port(), "winter").result_int(), 503u);
    auto log = admin(port, http::verb::get, "/v1/audit?limit=100", "view-token");
    EXPECT_NE(log.body().find("contained_by_overflow"), std::string::npos) << log.body();

    ASSERT_EQ(post("/v1/breakers/campaign-volume/_overflow/reset", R"({"reason":"checked"})").result_int(), 200u);
    EXPECT_EQ(send_mail(bb.port(), "winter").result_int(), 202u);
    EXPECT_EQ(send_mail(bb.port(), "spring").result_int(), 503u);
}

// An incident's open instances among thousands of keys: filtered by state, mode and breaker,
// paged in name order (`next_after`), `total` counting what matches. A misspelt or unreadable
// parameter is refused, never read as "everything".
TEST(admin_api, breaker_instances_are_filtered_and_paged) {
    admin_fixture f;
    for (const std::string key : {"c", "a", "b"}) {
        ASSERT_EQ(admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/" + key + "/trip", "op-token",
                        R"({"reason":"loop"})")
                      .result_int(),
                  200u);
    }
    auto list = [&](const std::string& query) { return admin(f.port(), http::verb::get, "/v1/breakers" + query, "view-token"); };
    auto open = list("?state=open");
    ASSERT_EQ(open.result_int(), 200u) << open.body();
    EXPECT_NE(open.body().find("\"total\":3,"), std::string::npos) << open.body();
    EXPECT_NE(open.body().find("\"next_after\":null"), std::string::npos) << open.body();
    EXPECT_EQ(open.body().find("\"state\":\"closed\""), std::string::npos) << open.body();
    auto first = list("?state=open&limit=2");
    EXPECT_NE(first.body().find("\"instance\":\"campaign-volume/a\""), std::string::npos) << first.body();
    EXPECT_NE(first.body().find("\"instance\":\"campaign-volume/b\""), std::string::npos) << first.body();
    EXPECT_EQ(first.body().find("\"instance\":\"campaign-volume/c\""), std::string::npos) << first.body();
    EXPECT_NE(first.body().find("\"next_after\":\"campaign-volume/b\""), std::string::npos) << first.body();
    auto second = list("?state=open&limit=2&after=campaign-volume%2Fb");
    EXPECT_NE(second.body().find("\"instance\":\"campaign-volume/c\""), std::string::npos) << second.body();
    EXPECT_EQ(second.body().find("\"instance\":\"campaign-volume/a\""), std::string::npos) << second.body();
    EXPECT_NE(second.body().find("\"next_after\":null"), std::string::npos) << second.body();
    auto closed = list("?state=closed");
    EXPECT_EQ(closed.body().find("campaign-volume/"), std::string::npos) << closed.body();
    EXPECT_EQ(list("?mode=auto").result_int(), 200u) << "the mode's own name";
    auto by_breaker = list("?breaker=campaign-volume&state=open");
    EXPECT_NE(by_breaker.body().find("\"total\":3,"), std::string::npos) << by_breaker.body();
    const std::pair<std::string, std::string> refused[] = {
        {"?state=tripped", "state"}, {"?mode=off", "mode"},          {"?breaker=nope", "breaker"},
        {"?limit=0", "limit"},       {"?limit=1001", "limit"},       {"?stat=open", "stat"},
    };
    for (const auto& [query, field] : refused) {
        auto r = list(query);
        EXPECT_EQ(r.result_int(), 400u) << query << ": " << r.body();
        EXPECT_EQ(code_of(r), "bad_field") << r.body();
        EXPECT_NE(r.body().find("\"field\":\"" + field + "\""), std::string::npos) << query << ": " << r.body();
    }
}

// A record the store cannot read is not "no such request": 503 naming why, not 404.
TEST(admin_api, an_unreadable_quarantine_record_is_503_not_404) {
    admin_fixture f;
    auto res = send_mail(f.bb.port(), "q", 1, true);
    ASSERT_EQ(res.result_int(), 202u) << res.body();
    const std::string ticket{res["x-breakerbox-ticket"]};
    sqlite_exec(f.dir + "/bb.db", ("UPDATE held_bodies SET headers = 'not headers' WHERE id = (SELECT id FROM "
                                   "held_requests WHERE ticket = '" + ticket + "')").c_str());
    auto r = admin(f.port(), http::verb::get, "/v1/quarantine/" + ticket, "view-token");
    EXPECT_EQ(r.result_int(), 503u) << r.body();
    EXPECT_EQ(code_of(r), "store_unavailable") << r.body();
    EXPECT_NE(r.body().find("corrupt headers"), std::string::npos) << r.body();
    EXPECT_EQ(r.body().find("no quarantined request"), std::string::npos) << r.body();
}

TEST(admin_api, quarantine_endpoints) {
    admin_fixture f;
    std::vector<std::string> tickets;
    for (int i = 0; i < 3; ++i) {
        auto res = send_mail(f.bb.port(), "q", 1, true);
        ASSERT_EQ(res.result_int(), 202u);
        ASSERT_EQ(res["x-breakerbox-decision"], "quarantined");
        tickets.emplace_back(res["x-breakerbox-ticket"]);
    }
    EXPECT_EQ(f.up.request_count(), 0u);
    auto list = admin(f.port(), http::verb::get, "/v1/quarantine?breaker=held&state=held", "view-token");
    ASSERT_EQ(list.result_int(), 200u);
    for (const auto& t : tickets) {
        EXPECT_NE(list.body().find(t), std::string::npos);
    }
    auto bad = admin(f.port(), http::verb::get, "/v1/quarantine?state=sideways", "view-token");
    EXPECT_EQ(bad.result_int(), 400u);
    auto one = admin(f.port(), http::verb::get, "/v1/quarantine/" + tickets[0], "view-token");
    ASSERT_EQ(one.result_int(), 200u);
    EXPECT_NE(one.body().find("\"history\""), std::string::npos);
    // The held body is customers' data: a viewer sees its size, an operator (who decides on
    // release or discard) the body itself.
    EXPECT_EQ(one.body().find("body_base64"), std::string::npos) << one.body();
    EXPECT_NE(one.body().find("\"body_redacted\":true"), std::string::npos) << one.body();
    EXPECT_NE(one.body().find("\"body_bytes\":"), std::string::npos) << one.body();
    auto as_operator = admin(f.port(), http::verb::get, "/v1/quarantine/" + tickets[0], "op-token");
    EXPECT_NE(as_operator.body().find("\"body_base64\":\""), std::string::npos) << as_operator.body();
    EXPECT_EQ(as_operator.body().find("body_redacted"), std::string::npos) << as_operator.body();
    EXPECT_EQ(as_operator.body().find("SG.secret-key"), std::string::npos) << "credentials stay admin-only";
    // Credentials to the upstream are not shown below the admin role.
    EXPECT_EQ(one.body().find("SG.secret-key"), std::string::npos) << one.body();
    EXPECT_NE(one.body().find("[\"authorization\",\"[redacted]\"]"), std::string::npos) << one.body();
    auto as_admin = admin(f.port(), http::verb::get, "/v1/quarantine/" + tickets[0], "admin-token");
    EXPECT_NE(as_admin.body().find("Bearer SG.secret-key"), std::string::npos) << as_admin.body();
    // So are credentials in the query string (HubSpot's legacy hapikey): in the list and the
    // record below admin, and in the access log.
    auto keyed = send_mail(f.bb.port(), "q", 1, true, "/v3/mail/send?hapikey=hub-secret-1&limit=5");
    ASSERT_EQ(keyed.result_int(), 202u);
    const std::string keyed_ticket{keyed["x-breakerbox-ticket"]};
    auto keyed_one = admin(f.port(), http::verb::get, "/v1/quarantine/" + keyed_ticket, "view-token");
    EXPECT_EQ(keyed_one.body().find("hub-secret-1"), std::string::npos) << keyed_one.body();
    EXPECT_NE(keyed_one.body().find("\"target\":\"/v3/mail/send?hapikey=[redacted]&limit=5\""), std::string::npos)
        << keyed_one.body();
    EXPECT_NE(keyed_one.body().find("\"target_redacted\":true"), std::string::npos) << keyed_one.body();
    auto keyed_list = admin(f.port(), http::verb::get, "/v1/quarantine?breaker=held", "admin-token");
    EXPECT_EQ(keyed_list.body().find("hub-secret-1"), std::string::npos) << keyed_list.body();
    auto keyed_admin = admin(f.port(), http::verb::get, "/v1/quarantine/" + keyed_ticket, "admin-token");
    EXPECT_NE(keyed_admin.body().find("hapikey=hub-secret-1"), std::string::npos) << keyed_admin.body();
    ASSERT_EQ(admin(f.port(), http::verb::post, "/v1/quarantine/" + keyed_ticket + "/discard", "op-token",
                    R"({"reason":"test record"})")
                  .result_int(),
              200u);
    EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/quarantine/q_nope", "view-token").result_int(), 404u);
    auto rel = admin(f.port(), http::verb::post, "/v1/quarantine/" + tickets[0] + "/release", "op-token",
                     R"({"reason":"verified the audience"})");
    ASSERT_EQ(rel.result_int(), 200u) << rel.body();
    EXPECT_NE(rel.body().find("\"ok\":true"), std::string::npos);
    EXPECT_EQ(f.up.request_count(), 1u);
    auto again = admin(f.port(), http::verb::post, "/v1/quarantine/" + tickets[0] + "/release", "op-token",
                       R"({"reason":"oops, twice"})");
    EXPECT_EQ(again.result_int(), 409u);
    // A force that is not a boolean is refused by name, not read as "no force".
    auto bad_force = admin(f.port(), http::verb::post, "/v1/quarantine/" + tickets[1] + "/release", "op-token",
                           R"({"reason":"x","force":"yes"})");
    EXPECT_EQ(bad_force.result_int(), 400u);
    EXPECT_NE(bad_force.body().find("\"field\":\"force\""), std::string::npos) << bad_force.body();
    // A force names the attempts the operator saw; without them, or not a count, nothing is sent.
    for (const char* body : {R"({"reason":"x","force":true})", R"({"reason":"x","force":true,"attempts":-1})",
                             R"({"reason":"x","force":true,"attempts":"1"})"}) {
        auto r = admin(f.port(), http::verb::post, "/v1/quarantine/" + tickets[1] + "/release", "op-token", body);
        EXPECT_EQ(r.result_int(), 400u) << body;
        EXPECT_NE(r.body().find("\"field\":\"attempts\""), std::string::npos) << r.body();
    }
    // Forced with the attempts seen (0: never released) it goes; here with 1 it is stale: 409.
    auto stale = admin(f.port(), http::verb::post, "/v1/quarantine/" + tickets[1] + "/release", "op-token",
                       R"({"reason":"x","force":true,"attempts":1})");
    EXPECT_EQ(stale.result_int(), 409u) << stale.body();
    EXPECT_NE(stale.body().find("another release ran meanwhile"), std::string::npos) << stale.body();
    EXPECT_EQ(f.up.request_count(), 1u);
    auto dis = admin(f.port(), http::verb::post, "/v1/quarantine/" + tickets[1] + "/discard", "op-token",
                     R"({"reason":"wrong segment"})");
    EXPECT_EQ(dis.result_int(), 200u);
    // Nothing was sent: no status (it used to carry the record's release attempts as one).
    EXPECT_EQ(dis.body().find("\"status\""), std::string::npos) << dis.body();
    auto nofilter = admin(f.port(), http::verb::post, "/v1/quarantine/release", "op-token", R"({"reason":"all"})");
    EXPECT_EQ(nofilter.result_int(), 400u);
    // A field it does not know is refused, never read as absent: without its misspelt agent
    // this would release everything the breaker holds, unpaced without its rate.
    const std::pair<const char*, const char*> unknown[] = {
        {R"({"reason":"x","filter":{"breaker":"held","agnet":"bot-7"}})", "filter.agnet"},
        {R"({"reason":"x","rate_per_sec":1,"filter":{"breaker":"held"}})", "rate_per_sec"},
        {R"({"reason":"x","rate_per_s":"5","filter":{"breaker":"held"}})", "rate_per_s"},
        {R"({"reason":"x","filter":{"breaker":"held","state":"hold"}})", "filter.state"},
        {R"({"reason":"x","breaker":"held","filter":{"agent":"bot-7"}})", "breaker"},
        {R"({"reason":"x","filter":"breaker=held"})", "filter"},
        // Paging is for a list: a bulk action would ignore it and take every match.
        {R"({"reason":"x","filter":{"breaker":"held","after":"q_1"}})", "filter.after"},
        // An empty value (a script's unset variable) would match any agent.
        {R"({"reason":"x","filter":{"breaker":"held","agent":""}})", "filter.agent"},
        {R"({"reason":"x","filter":{"breaker":"","to":1767225600000}})", "filter.breaker"}};
    for (const auto& [body, field] : unknown) {
        auto r = admin(f.port(), http::verb::post, "/v1/quarantine/release", "op-token", body);
        EXPECT_EQ(r.result_int(), 400u) << body;
        EXPECT_NE(r.body().find(std::string{"\"field\":\""} + field + "\""), std::string::npos) << r.body();
    }
    auto listed = admin(f.port(), http::verb::get, "/v1/quarantine?breakr=held", "op-token");
    EXPECT_EQ(listed.result_int(), 400u) << listed.body();
    auto empty = admin(f.port(), http::verb::get, "/v1/quarantine?breaker=held&agent=", "op-token");
    EXPECT_EQ(empty.result_int(), 400u) << empty.body();
    EXPECT_NE(empty.body().find("\"field\":\"agent\""), std::string::npos) << empty.body();
    EXPECT_EQ(f.up.request_count(), 1u);
    auto bulk = admin(f.port(), http::verb::post, "/v1/quarantine/release", "op-token",
                      R"({"reason":"ok now","rate_per_s":50,"filter":{"breaker":"held"}})");
    ASSERT_EQ(bulk.result_int(), 200u) << bulk.body();
    EXPECT_NE(bulk.body().find("\"released\":1"), std::string::npos) << bulk.body();
    EXPECT_EQ(f.up.request_count(), 2u);
    // The audit record says what happened, not just "ok".
    // A page asked for wrongly is refused, not read as another page.
    for (const char* q : {"/v1/audit?limit=abc", "/v1/audit?after=-1", "/v1/audit?limt=5"}) {
        EXPECT_EQ(admin(f.port(), http::verb::get, q, "admin-token").result_int(), 400u) << q;
    }
    // Oldest first, a page at a time: a full page names where the next one starts.
    const auto first = admin(f.port(), http::verb::get, "/v1/audit?limit=1", "admin-token");
    EXPECT_NE(first.body().find("\"next_after\":1}"), std::string::npos) << first.body();
    const auto rest = admin(f.port(), http::verb::get, "/v1/audit?after=1&limit=1000", "admin-token");
    EXPECT_NE(rest.body().find("\"next_after\":null}"), std::string::npos) << rest.body().substr(rest.body().size() - 200);
    // A cursor that names no record is the caller's mistake (or a record pruned meanwhile):
    // 400 naming it, not a 503 that pages someone and makes scripts retry.
    const auto bogus = admin(f.port(), http::verb::get, "/v1/quarantine?after=q_bogus", "view-token");
    EXPECT_EQ(bogus.result_int(), 400u) << bogus.body();
    EXPECT_EQ(code_of(bogus), "bad_field");
    EXPECT_NE(bogus.body().find("\"field\":\"after\""), std::string::npos) << bogus.body();
    auto log = admin(f.port(), http::verb::get, "/v1/audit?limit=1000", "admin-token");
    EXPECT_NE(log.body().find("ok: 1 matched, 1 released, 0 release_failed, 0 outcome_unknown, 0 skipped"),
              std::string::npos)
        << log.body();
}

// Every mutation refuses a field it does not know, a field given twice and a wrong type,
// and acts on nothing: a misspelt expiry would leave a breaker forced_closed for good, a
// preview of a rollback would roll back, a bulk limit of 0 would release everything.
TEST(admin_api, every_mutation_refuses_unknown_repeated_and_mistyped_fields) {
    admin_fixture f;
    ASSERT_EQ(send_mail(f.bb.port(), "c", 1, true).result_int(), 202u);  // held
    const auto listed = admin(f.port(), http::verb::get, "/v1/quarantine", "view-token");
    const auto at = listed.body().find("\"ticket\":\"");
    ASSERT_NE(at, std::string::npos) << listed.body();
    const std::string ticket = listed.body().substr(at + 10, listed.body().find('"', at + 10) - at - 10);
    struct refused {
        std::string target;
        std::string body;
        std::string field;
    };
    const refused cases[] = {
        {"/v1/breakers/campaign-volume/mode", R"({"reason":"maint","mode":"forced_closed","expiresIn":"10m"})", "expiresIn"},
        {"/v1/breakers/campaign-volume/mode", R"({"reason":"r","mode":"forced_open","mode":"forced_closed"})", "mode"},
        {"/v1/breakers/campaign-volume/c/trip", R"({"reason":"r","why":"x"})", "why"},
        {"/v1/breakers/campaign-volume/c/reset", R"({"reason":"r","reason":"s"})", "reason"},
        {"/v1/breakers/campaign-volume/c/reset", R"({"reason":5})", "reason"},
        {"/v1/quarantine/" + ticket + "/release", R"({"reason":"r","attempts":2})", "attempts"},
        {"/v1/quarantine/" + ticket + "/release", R"({"reason":"r","forced":true})", "forced"},
        {"/v1/quarantine/" + ticket + "/discard", R"({"reason":"r","force":true})", "force"},
        {"/v1/quarantine/release", R"({"reason":"r","filter":{"breaker":"held","limit":0}})", "filter.limit"},
        {"/v1/quarantine/release", R"({"reason":"r","filter":{"breaker":"held","limit":5000}})", "filter.limit"},
        {"/v1/quarantine/release", R"({"reason":"r","filter":{"breaker":"held","limit":""}})", "filter.limit"},
        {"/v1/quarantine/release", R"({"reason":"r","filter":{"breaker":"held","breaker":"other"}})", "filter.breaker"},
        {"/v1/quarantine/discard", R"({"reason":"r","filter":{"breaker":"held"},"rate_per_s":5})", "rate_per_s"},
        // Seconds (or 0) where milliseconds belong: read as such, every record held since 1970.
        {"/v1/quarantine/discard", R"({"reason":"r","filter":{"from":1700000000}})", "filter.from"},
        {"/v1/quarantine/discard", R"({"reason":"r","filter":{"breaker":"held","to":"0"}})", "filter.to"},
        {"/v1/quarantine/release", R"({"reason":"r","filter":{"from":1700000000000,"to":1600000000000}})", "filter.from"},
        {"/v1/quarantine/discard", R"({"reason":"r","filter":{"to":1700000000000000}})", "filter.to"},
        {"/v1/quarantine/discard", R"({"reason":"r","filter":{"from":1700000000000,"to":1700000000000}})", "filter.from"},
        {"/v1/config/rollback", R"({"reason":"r","version":"1"})", "version"},
        {"/v1/config/rollback?dry_run=1", R"({"reason":"preview","version":1})", "dry_run"},
        {"/v1/config/reload", R"({"reason":"r","metrics_only":true})", "metrics_only"},
    };
    for (const auto& c : cases) {
        auto r = admin(f.port(), http::verb::post, c.target, "admin-token", c.body);
        EXPECT_EQ(r.result_int(), 400u) << c.target << " " << c.body << ": " << r.body();
        EXPECT_EQ(code_of(r), "bad_field") << c.body << ": " << r.body();
        EXPECT_NE(r.body().find("\"field\":\"" + c.field + "\""), std::string::npos) << c.body << ": " << r.body();
    }
    auto seconds = admin(f.port(), http::verb::get, "/v1/quarantine?from=1700000000", "view-token");
    EXPECT_EQ(seconds.result_int(), 400u) << seconds.body();
    EXPECT_NE(seconds.body().find("\"field\":\"from\""), std::string::npos) << seconds.body();
    auto twice = admin(f.port(), http::verb::get, "/v1/quarantine?agent=a&agent=b", "view-token");
    EXPECT_EQ(twice.result_int(), 400u) << twice.body();
    EXPECT_NE(twice.body().find("\"field\":\"agent\""), std::string::npos) << twice.body();
    // Nothing acted on: the breaker as it was, the request still held, nothing sent.
    const auto snap = f.bb.server().breakers()->get("campaign-volume", f.bb.server().now());
    EXPECT_TRUE(!snap || snap->md == bb::breakers::mode::automatic);
    EXPECT_EQ(f.up.request_count(), 0u);
    EXPECT_NE(admin(f.port(), http::verb::get, "/v1/quarantine/" + ticket, "view-token").body().find("\"state\":\"held\""),
              std::string::npos);
    // A key is no instance of a breaker of one instance (`held`), nor is an empty key.
    for (const char* id : {"/v1/breakers/held/spring-sale/reset", "/v1/breakers/campaign-volume//reset"}) {
        auto r = admin(f.port(), http::verb::post, id, "op-token", R"({"reason":"r"})");
        EXPECT_EQ(r.result_int(), 404u) << id << ": " << r.body();
    }
    EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/breakers/held/spring-sale", "view-token").result_int(), 404u);
    EXPECT_EQ(admin(f.port(), http::verb::post, "/v1/breakers/held/reset", "op-token", R"({"reason":"r"})").result_int(),
              200u);
}

TEST(admin_api, config_apply_validates_guards_loosening_and_rolls_back) {
    admin_fixture f;
    // Invalid: every error listed, nothing changes.
    auto invalid = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                         R"({"reason":"typo","config":{"listeners":[],"upstreams":[{"name":"u","url":"ftp://x"}],"routes":[],"limts":{}}})");
    EXPECT_EQ(invalid.result_int(), 400u);
    EXPECT_EQ(code_of(invalid), "invalid_config");
    EXPECT_NE(invalid.body().find("upstreams[0].url"), std::string::npos) << invalid.body();
    EXPECT_NE(invalid.body().find("limts: is not a known setting"), std::string::npos) << invalid.body();
    EXPECT_EQ(send_mail(f.bb.port(), "c").result_int(), 202u);

    const auto current = admin(f.port(), http::verb::get, "/v1/config", "view-token");
    ASSERT_EQ(current.result_int(), 200u);
    // A longer window starts the rule's counts again: no tighter for an operator.
    std::string longer = admin_config(f.up.port(), f.dir);
    const std::string window_1h = "\"window\": \"1h\"";
    longer.replace(longer.find(window_1h), window_1h.size(), "\"window\": \"2h\"");
    auto lengthened = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                            "{\"reason\":\"longer\",\"config\":" + longer + "}");
    EXPECT_EQ(lengthened.result_int(), 403u) << lengthened.body();
    EXPECT_NE(lengthened.body().find("changes the window of rule recipients (its counts start again)"),
              std::string::npos) << lengthened.body();
    // Fields it does not know, or of the wrong type, are refused, never acted on as absent.
    for (const std::string& body : {"{\"reason\":\"try\",\"dry_run\":true,\"config\":" + longer + "}",
                                    "{\"reason\":\"try\",\"baseVersion\":1,\"config\":" + longer + "}",
                                    "{\"reason\":\"two\\nlines\",\"config\":" + longer + "}"}) {
        auto r = admin(f.port(), http::verb::post, "/v1/config", "admin-token", body);
        EXPECT_EQ(r.result_int(), 400u) << body << ": " << r.body();
        EXPECT_EQ(code_of(r), "bad_field") << r.body();
    }
    auto untyped = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/mode", "op-token",
                         R"({"reason":"r","mode":"forced_closed","expires_in":600})");
    EXPECT_EQ(untyped.result_int(), 400u) << untyped.body();
    EXPECT_NE(untyped.body().find("\"field\":\"expires_in\""), std::string::npos) << untyped.body();
    // Raising a limit loosens a guard: operators may not, admins may.
    std::string looser = admin_config(f.up.port(), f.dir, 5000);
    auto as_op = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                       "{\"reason\":\"bigger campaign\",\"config\":" + looser + "}");
    EXPECT_EQ(as_op.result_int(), 403u) << as_op.body();
    auto dry = admin(f.port(), http::verb::post, "/v1/config?dry_run=1", "admin-token",
                     "{\"reason\":\"check\",\"config\":" + looser + "}");
    ASSERT_EQ(dry.result_int(), 200u) << dry.body();
    EXPECT_NE(dry.body().find("\"applied\":false"), std::string::npos);
    EXPECT_NE(dry.body().find("rules[recipients].limit: 1000 -> 5000"), std::string::npos) << dry.body();
    auto applied = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                         "{\"reason\":\"bigger campaign\",\"config\":" + looser + "}");
    ASSERT_EQ(applied.result_int(), 200u) << applied.body();
    EXPECT_EQ(send_mail(f.bb.port(), "big", 3000).result_int(), 202u);
    // Tightening is an operator's call.
    std::string tighter = admin_config(f.up.port(), f.dir, 10);
    auto tight = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                       "{\"reason\":\"tighten\",\"config\":" + tighter + "}");
    ASSERT_EQ(tight.result_int(), 200u) << tight.body();
    EXPECT_EQ(send_mail(f.bb.port(), "small", 20).result_int(), 503u);
    // Roll back to the looser version (admin only).
    simdjson::dom::parser p;
    std::int64_t version = 0;
    ASSERT_EQ(p.parse(applied.body())["version"].get(version), simdjson::SUCCESS);
    EXPECT_EQ(admin(f.port(), http::verb::post, "/v1/config/rollback", "op-token",
                    "{\"reason\":\"undo\",\"version\":" + std::to_string(version) + "}")
                  .result_int(),
              403u);
    auto rb = admin(f.port(), http::verb::post, "/v1/config/rollback", "admin-token",
                    "{\"reason\":\"undo\",\"version\":" + std::to_string(version) + "}");
    ASSERT_EQ(rb.result_int(), 200u) << rb.body();
    EXPECT_EQ(send_mail(f.bb.port(), "other", 20).result_int(), 202u);
}

// The config names the same suppression file before and after, but a list that lost entries
// (cut short while being rewritten, an address taken off or swapped) lets mail through to
// addresses it held: a loosening, for the admin role, with the entries in the diff.
TEST(admin_api, a_suppression_list_that_lost_entries_is_a_loosening) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    const std::string list = dir + "/suppressed.txt";
    { std::ofstream{list} << "ann@example.com\nbob@example.com\n"; }
    std::string cfg = admin_config(up.port(), dir);
    const std::string rules = "\"rules\": [";
    cfg.insert(cfg.find(rules) + rules.size(),
               "{\"id\": \"audience\", \"route\": \"mail-send\", \"guard\": {\"recipients\": {\"suppression_file\": \"" +
                   list + "\"}}, \"failure_mode\": \"volume-spike\", \"trips\": \"campaign-volume\"},");
    proxy_instance bb{cfg};
    const auto port = bb.server().admin_port();
    const std::string body = "{\"reason\":\"list re-read\",\"config\":" + cfg + "}";
    { std::ofstream{list, std::ios::trunc} << "ann@example.com\n"; }
    auto as_op = admin(port, http::verb::post, "/v1/config", "op-token", body);
    EXPECT_EQ(as_op.result_int(), 403u) << as_op.body();
    EXPECT_NE(as_op.body().find("takes 1 entry off the suppression list of rule audience (2 -> 1 entries)"),
              std::string::npos) << as_op.body();
    auto dry = admin(port, http::verb::post, "/v1/config?dry_run=1", "admin-token", body);
    EXPECT_NE(dry.body().find("rules[audience].guard.recipients.suppression_file: 2 -> 1 entries (1 removed)"),
              std::string::npos) << dry.body();
    // An address swapped for another (the same size): bob is no longer suppressed.
    { std::ofstream{list, std::ios::trunc} << "ann@example.com\ncarl@example.com\n"; }
    auto swapped = admin(port, http::verb::post, "/v1/config", "op-token", body);
    EXPECT_EQ(swapped.result_int(), 403u) << swapped.body();
    EXPECT_NE(swapped.body().find("takes 1 entry off the suppression list of rule audience (2 -> 2 entries)"),
              std::string::npos) << swapped.body();
    // Adding to it is an operator's call.
    { std::ofstream{list, std::ios::trunc} << "ann@example.com\nbob@example.com\ncarl@example.com\n"; }
    EXPECT_EQ(admin(port, http::verb::post, "/v1/config", "op-token", body).result_int(), 200u);
    // An empty list is refused outright (read while being rewritten, it would suppress nobody).
    { std::ofstream{list, std::ios::trunc} << ""; }
    auto empty = admin(port, http::verb::post, "/v1/config", "admin-token", body);
    EXPECT_EQ(empty.result_int(), 400u) << empty.body();
    EXPECT_NE(empty.body().find("holds no address or digest"), std::string::npos) << empty.body();
}

// admin.max_connections: idle (or handshaking) connections beyond it are closed at accept,
// and one that ends makes room again.
TEST(admin_api, connections_beyond_admin_max_connections_are_closed) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = admin_config(up.port(), dir);
    cfg.insert(cfg.find("\"admin\": {") + 10, "\"max_connections\": 2, ");
    proxy_instance bb{cfg};
    const auto port = bb.server().admin_port();
    auto healthz = [&] {
        raw_client c{port, std::chrono::seconds{2}};
        c.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        return c.read_response().result_int();
    };
    auto idle1 = std::make_unique<raw_client>(port);
    raw_client idle2{port};
    // The two idle ones hold both places (accepted in order: wait until the server has them).
    bool full = false;
    for (int i = 0; i < 200 && !full; ++i) {
        full = healthz() == 0;
    }
    EXPECT_TRUE(full) << "a third connection was served beside two idle ones";
    idle1.reset();  // one ends: room again
    bool served = false;
    for (int i = 0; i < 200 && !served; ++i) {
        served = healthz() == 200;
    }
    EXPECT_TRUE(served);
}

// A duplicates guard's table shows in /metrics: the pairs it tracks, those it forgot for
// room, and new ones it could not track (a max_keys too small for the traffic).
TEST(admin_api, a_duplicates_guards_table_shows_in_metrics) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = admin_config(up.port(), dir);
    const std::string rules = "\"rules\": [";
    cfg.insert(cfg.find(rules) + rules.size(),
               "{\"id\": \"loops\", \"route\": \"mail-send\", \"guard\": {\"duplicates\": {\"max\": 3, \"window\": "
               "\"1h\"}}, \"failure_mode\": \"volume-spike\", \"trips\": \"campaign-volume\"},");
    proxy_instance bb{cfg};
    const auto port = bb.server().admin_port();
    EXPECT_EQ(metric_value(port, "breakerbox_duplicates_pairs{rule=\"loops\"}"), "0");
    const auto sent = http_request(bb.port(), http::verb::post, "/v3/mail/send",
                                   R"({"personalizations": [{"to": [{"email": "a@example.com"}, {"email": "b@example.com"}]}],
                                       "subject": "Hi", "content": [{"type": "text/plain", "value": "x"}]})",
                                   {{"content-type", "application/json"}, {"x-campaign-id", "c"}});
    ASSERT_EQ(sent.result_int(), 202u) << sent.body();
    EXPECT_EQ(metric_value(port, "breakerbox_duplicates_pairs{rule=\"loops\"}"), "2");
    EXPECT_EQ(metric_value(port, "breakerbox_duplicates_evictions_total{rule=\"loops\"}"), "0");
    EXPECT_EQ(metric_value(port, "breakerbox_duplicates_untracked_total{rule=\"loops\"}"), "0");
    EXPECT_EQ(metric_value(port, "breakerbox_duplicates_pairs{rule=\"recipients\"}"), "missing") << "a cap has no table";
}

// Two config changes at once: the second is refused (409 config_busy) rather than judged
// against the config the first is replacing and installed over it. Here an operator's
// resend of the old config would silently undo an admin's tightening (and, judged against
// the old base, need no admin role to do it).
TEST(admin_api, a_config_change_while_another_is_in_flight_is_refused_not_applied_over_it) {
    admin_fixture f;
    auto* db = f.bb.server().db();
    auto wait_queued = [&](std::uint64_t n) {  // bounded: the admin API queues its audit writes
        for (int i = 0; i < 5000 && db->stats().queued < n; ++i) {
            pollfd none{};
            ::poll(&none, 0, 1);
        }
        return db->stats().queued;
    };
    db->pause_writer(true);  // the first change parks at its write-ahead audit record
    response tightened;
    std::thread first{[&] {
        tightened = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                          "{\"reason\":\"tighten\",\"config\":" + admin_config(f.up.port(), f.dir, 10) + "}");
    }};
    ASSERT_EQ(wait_queued(1), 1u);
    response resent;
    std::thread second{[&] {
        resent = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                       "{\"reason\":\"resend\",\"config\":" + admin_config(f.up.port(), f.dir) + "}");
    }};
    EXPECT_EQ(wait_queued(2), 2u) << "the second change's audit record";
    db->pause_writer(false);
    first.join();
    second.join();
    EXPECT_EQ(tightened.result_int(), 200u) << tightened.body();
    EXPECT_EQ(resent.result_int(), 409u) << resent.body();
    EXPECT_EQ(code_of(resent), "config_busy");
    EXPECT_EQ(send_mail(f.bb.port(), "c", 20).result_int(), 503u) << "the admin's limit of 10 holds";
}

// A timed mode runs from when it is set: the write-ahead audit record before it can wait
// (behind a flood of holds; here a paused writer) while time goes by.
TEST(admin_api, a_timed_mode_runs_from_when_it_is_set_not_from_when_it_was_asked) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{admin_config(up.port(), dir), &clock};
    auto* db = bb.server().db();
    db->pause_writer(true);
    const auto queued = db->stats().queued;
    response set;
    std::thread t{[&] {
        set = admin(bb.server().admin_port(), http::verb::post, "/v1/breakers/campaign-volume/spring/mode", "op-token",
                    R"({"mode":"forced_open","expires_in":"10m","reason":"hold"})");
    }};
    for (int i = 0; i < 5000 && db->stats().queued <= queued; ++i) {  // bounded
        pollfd none{};
        ::poll(&none, 0, 1);
    }
    EXPECT_GT(db->stats().queued, queued) << "the audit record never queued";
    clock.advance(5min);
    db->pause_writer(false);
    t.join();
    ASSERT_EQ(set.result_int(), 200u) << set.body();
    const auto s = bb.server().breakers()->get("campaign-volume/spring", bb.server().now());
    ASSERT_TRUE(s && s->mode_expires);
    EXPECT_EQ(*s->mode_expires, bb.server().now() + 10min) << "the 10 minutes began before the wait";
}

// Applying a rule change as metrics_only shadows the breakers it trips, but never one that
// contains something now: a trip or an operator's forced_open must not be undone by it.
TEST(admin_api, a_metrics_only_apply_does_not_undo_a_trip_or_a_forced_mode) {
    admin_fixture f;
    ASSERT_EQ(admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/spring/trip", "op-token",
                    R"({"reason":"spring misfire"})")
                  .result_int(),
              200u);
    ASSERT_EQ(send_mail(f.bb.port(), "spring").result_int(), 503u);
    // metrics_only that does not read as a boolean is refused, not taken as false.
    auto unread = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                        "{\"reason\":\"typo\",\"metrics_only\":\"true\",\"config\":" +
                            admin_config(f.up.port(), f.dir, 500) + "}");
    EXPECT_EQ(unread.result_int(), 400u) << unread.body();
    EXPECT_NE(unread.body().find("\"field\":\"metrics_only\""), std::string::npos) << unread.body();
    // A tighter limit (an operator's call), applied in shadow.
    auto shadowed = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                          "{\"reason\":\"try a tighter cap\",\"metrics_only\":true,\"config\":" +
                              admin_config(f.up.port(), f.dir, 500) + "}");
    ASSERT_EQ(shadowed.result_int(), 200u) << shadowed.body();
    EXPECT_NE(shadowed.body().find("\"still_enforcing\":[\"campaign-volume (campaign-volume/spring is open"),
              std::string::npos)
        << shadowed.body();
    EXPECT_EQ(send_mail(f.bb.port(), "spring").result_int(), 503u) << "the trip still contains spring";
    EXPECT_EQ(send_mail(f.bb.port(), "summer", 600).result_int(), 503u) << "the new cap enforces: not shadowed";

    // With nothing contained, the same apply shadows the breaker: the new cap only records.
    admin_fixture g;
    auto quiet = admin(g.port(), http::verb::post, "/v1/config", "op-token",
                       "{\"reason\":\"try a tighter cap\",\"metrics_only\":true,\"config\":" +
                           admin_config(g.up.port(), g.dir, 500) + "}");
    ASSERT_EQ(quiet.result_int(), 200u) << quiet.body();
    EXPECT_EQ(quiet.body().find("still_enforcing"), std::string::npos) << quiet.body();
    EXPECT_EQ(send_mail(g.bb.port(), "summer", 600).result_int(), 202u) << "shadowed: would have paused";

    // A forced_open kill switch on the breaker-wide instance stays, too.
    admin_fixture h;
    ASSERT_EQ(admin(h.port(), http::verb::post, "/v1/breakers/campaign-volume/mode", "op-token",
                    R"({"reason":"stop all campaigns","mode":"forced_open"})")
                  .result_int(),
              200u);
    auto forced = admin(h.port(), http::verb::post, "/v1/config", "op-token",
                        "{\"reason\":\"try a tighter cap\",\"metrics_only\":true,\"config\":" +
                            admin_config(h.up.port(), h.dir, 500) + "}");
    ASSERT_EQ(forced.result_int(), 200u) << forced.body();
    EXPECT_NE(forced.body().find("forced_open"), std::string::npos) << forced.body();
    EXPECT_EQ(send_mail(h.bb.port(), "autumn").result_int(), 503u);

    // A new rule on a breaker an unchanged rule trips too: shadowing the breaker would switch
    // that rule off as well, so the breaker keeps enforcing.
    admin_fixture k;
    std::string added = admin_config(k.up.port(), k.dir);
    // Appended: a new rule put before existing ones could decide first (the admin's).
    const std::string rules_end = "}],\"log\"";
    ASSERT_NE(added.find(rules_end), std::string::npos);
    added.insert(added.find(rules_end) + 1,
                 ",{\"id\": \"new-cap\", \"route\": \"mail-send\", \"key\": [\"header:x-campaign-id\"],"
                 "\"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\", \"limit\": 100000,"
                 "\"failure_mode\": \"volume-spike\", \"trips\": \"campaign-volume\"}");
    auto shared = admin(k.port(), http::verb::post, "/v1/config", "op-token",
                        "{\"reason\":\"add a wide cap\",\"metrics_only\":true,\"config\":" + added + "}");
    ASSERT_EQ(shared.result_int(), 200u) << shared.body();
    EXPECT_NE(shared.body().find("campaign-volume (also tripped by unchanged rule recipients)"), std::string::npos)
        << shared.body();
    EXPECT_EQ(send_mail(k.bb.port(), "winter", 1200).result_int(), 503u) << "the existing cap of 1000 still enforces";
}

// The admin section (tokens, roles), routes, upstreams and every other setting outside the
// guards are the admin role's: an operator must not be able to mint itself an admin token.
TEST(admin_api, an_operator_cannot_change_the_admin_section_or_anything_outside_the_guards) {
    admin_fixture f;
    std::string with_evil = admin_config(f.up.port(), f.dir);
    const std::string tokens = "\"tokens\": [";
    with_evil.replace(with_evil.find(tokens) + tokens.size(), 0,
                      "{\"name\": \"evil\", \"sha256\": \"" + sha256_hex("evil-token") + "\", \"role\": \"admin\"},");
    auto minted = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                        "{\"reason\":\"new colleague\",\"config\":" + with_evil + "}");
    EXPECT_EQ(minted.result_int(), 403u) << minted.body();
    EXPECT_NE(minted.body().find("changes admin"), std::string::npos) << minted.body();
    EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/breakers", "evil-token").result_int(), 401u);
    // A route whose match moves (its rules would stop meeting the traffic) and a measure
    // turned into a constant are the admin's too.
    std::string moved = admin_config(f.up.port(), f.dir);
    moved.replace(moved.find("\"path_prefix\": \"/v3/mail/send\""), 30, "\"path_prefix\": \"/v3/mail/sendX\"");
    EXPECT_EQ(admin(f.port(), http::verb::post, "/v1/config?dry_run=1", "op-token",
                    "{\"reason\":\"r\",\"config\":" + moved + "}")
                  .result_int(),
              403u);
    std::string zeroed = admin_config(f.up.port(), f.dir);
    zeroed.replace(zeroed.find("\"count($.to[*])\""), 16, "\"0\"");
    auto z = admin(f.port(), http::verb::post, "/v1/config?dry_run=1", "op-token", "{\"reason\":\"r\",\"config\":" + zeroed + "}");
    EXPECT_EQ(z.result_int(), 403u) << z.body();
    // The admin may.
    auto by_admin = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                          "{\"reason\":\"new colleague\",\"config\":" + with_evil + "}");
    EXPECT_EQ(by_admin.result_int(), 200u) << by_admin.body();
    EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/breakers", "evil-token").result_int(), 200u);
}

// Secrets in the config (an alert sink's Authorization header, a PagerDuty routing key) and
// in audited request bodies are not for viewers.
TEST(admin_api, a_viewer_reads_the_config_and_the_audit_log_without_secrets) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = admin_config(up.port(), dir);
    cfg.insert(cfg.rfind('}'), ", \"alerts\": {\"sinks\": [{\"name\": \"hook\", \"type\": \"webhook\", "
                               "\"url\": \"http://127.0.0.1:9/alerts\", \"headers\": {\"Authorization\": \"Bearer HOOK-SECRET\", \"X-Hook-Key\": \"HOOK-KEY-2\"}}]}");
    proxy_instance bb{cfg};
    const auto port = bb.server().admin_port();
    auto as_viewer = admin(port, http::verb::get, "/v1/config", "view-token");
    ASSERT_EQ(as_viewer.result_int(), 200u);
    EXPECT_EQ(as_viewer.body().find("HOOK-SECRET"), std::string::npos) << as_viewer.body();
    EXPECT_EQ(as_viewer.body().find("HOOK-KEY-2"), std::string::npos) << "a sink's headers, whatever their names";
    EXPECT_NE(as_viewer.body().find("\"Authorization\":\"[redacted]\""), std::string::npos) << as_viewer.body();
    EXPECT_NE(as_viewer.body().find("\"limit\":1000"), std::string::npos) << "the rest is shown";
    // An alert sink's URL (a Slack webhook's is its credential) is hidden too.
    EXPECT_EQ(as_viewer.body().find("127.0.0.1:9/alerts"), std::string::npos) << as_viewer.body();
    EXPECT_NE(admin(port, http::verb::get, "/v1/config", "op-token").body().find("HOOK-SECRET"), std::string::npos)
        << "operators send the config back changed: they read it whole";
    // A request body in the audit log: its secret-named values are hidden from viewers.
    admin(port, http::verb::post, "/v1/breakers/campaign-volume/x/trip", "op-token",
          R"({"reason":"test","api_token":"TOKEN-123"})");
    auto log = admin(port, http::verb::get, "/v1/audit", "view-token");
    EXPECT_EQ(log.body().find("TOKEN-123"), std::string::npos) << log.body();
    EXPECT_NE(admin(port, http::verb::get, "/v1/audit", "admin-token").body().find("TOKEN-123"), std::string::npos);
    // A config refused for an upstream URL that carries a credential: neither its error
    // (kept in the audit log) nor the refused body shows the credential to a viewer.
    std::string leaky = cfg;
    const std::string plain_url = "\"url\": \"http://127.0.0.1:";
    leaky.replace(leaky.find(plain_url), plain_url.size(), "\"url\": \"http://svc:UP-SECRET@127.0.0.1:");
    auto refused = admin(port, http::verb::post, "/v1/config", "op-token",
                         R"({"reason":"rotate","config":)" + leaky + "}");
    EXPECT_EQ(refused.result_int(), 400u) << refused.body();
    EXPECT_EQ(refused.body().find("UP-SECRET"), std::string::npos) << refused.body();
    EXPECT_NE(refused.body().find("http://[redacted]@127.0.0.1:"), std::string::npos) << refused.body();
    log = admin(port, http::verb::get, "/v1/audit", "view-token");
    EXPECT_EQ(log.body().find("UP-SECRET"), std::string::npos) << log.body();
}

// What the judge does not compare field by field is a loosening (fail closed), and a key
// given twice is no config: an operator cannot change what it may not through either.
TEST(admin_api, every_unjudged_change_and_every_duplicate_key_needs_more_than_an_operator) {
    admin_fixture f;
    auto with = [&](std::string c, const std::string& from, const std::string& to) {
        const auto at = c.find(from);
        EXPECT_NE(at, std::string::npos) << from;
        if (at != std::string::npos) {
            c.replace(at, from.size(), to);
        }
        return c;
    };
    const std::string base = admin_config(f.up.port(), f.dir);
    auto try_as_operator = [&](const std::string& cfg) {
        return admin(f.port(), http::verb::post, "/v1/config?dry_run=1", "op-token",
                     R"({"reason":"tidy","config":)" + cfg + "}");
    };
    struct change {
        std::string cfg;
        std::string named;
    };
    const std::vector<change> loosenings{
        // An aggregation with the same text and limit.
        {with(base, R"j("measure": {"sum": "count($.to[*])"})j", R"j("measure": {"avg": "count($.to[*])"})j"),
         "changes measure of rule recipients"},
        // A breaker setting outside action, reset and cooldown.
        {with(base, R"("id": "held", "action": "quarantine", "reset": "manual")",
              R"("id": "held", "action": "quarantine", "reset": "manual", "max_instances": 5)"),
         "changes max_instances of breaker held"},
        // A failure mode's severity.
        {with(base, R"("severity": "sev2")", R"("severity": "sev4")"), "changes severity of failure mode volume-spike"},
    };
    for (const auto& c : loosenings) {
        auto r = try_as_operator(c.cfg);
        EXPECT_EQ(r.result_int(), 403u) << c.named << ": " << r.body();
        EXPECT_NE(r.body().find(c.named), std::string::npos) << r.body();
    }
    // Two rules swapped.
    const std::string rules_start = R"("rules": [)";
    const auto rs = base.find(rules_start) + rules_start.size();
    const auto second = base.find(R"({"id": "hold-tagged")", rs);
    const auto end = base.find("}]", second) + 1;
    const std::string first_rule = base.substr(rs, second - rs - 1);  // without the ","
    const std::string second_rule = base.substr(second, end - second);
    std::string swapped = base;
    swapped.replace(rs, end - rs, second_rule + "," + first_rule);
    auto reordered = try_as_operator(swapped);
    EXPECT_EQ(reordered.result_int(), 403u) << reordered.body();
    EXPECT_NE(reordered.body().find("reorders rules"), std::string::npos) << reordered.body();

    // The admin section given twice: the parser read the first, a section-by-section
    // comparison the last. No config, for anyone.
    const auto admin_at = base.find(R"("admin":)");
    const auto store_at = base.find(R"(,"store":)", admin_at);
    ASSERT_NE(store_at, std::string::npos);
    const std::string admin_section = base.substr(admin_at, store_at - admin_at);
    std::string twice = base;
    twice.insert(store_at, "," + admin_section);
    auto dup = admin(f.port(), http::verb::post, "/v1/config?dry_run=1", "admin-token",
                     R"({"reason":"tidy","config":)" + twice + "}");
    EXPECT_EQ(dup.result_int(), 400u) << dup.body();
    EXPECT_NE(dup.body().find("admin: is given twice"), std::string::npos) << dup.body();

    // A new rule put first could decide before the existing ones.
    std::string first = base;
    first.insert(first.find(rules_start) + rules_start.size(),
                 R"({"id": "early", "route": "mail-send", "measure": {"per_request": "requests"}, "limit": 100000,)"
                 R"( "failure_mode": "volume-spike", "trips": "held"},)");
    auto inserted = try_as_operator(first);
    EXPECT_EQ(inserted.result_int(), 403u) << inserted.body();
    EXPECT_NE(inserted.body().find("puts new rule early before existing rules"), std::string::npos) << inserted.body();
    // A description is for people: an operator's to edit.
    auto described = try_as_operator(with(base, R"("id": "recipients",)", R"("id": "recipients", "description": "cap",)"));
    EXPECT_EQ(described.result_int(), 200u) << described.body();
    // A dry run that is misspelt or unreadable is refused, never applied.
    for (const char* q : {"?DRY_RUN=1", "?dry_run=yes", "?dryrun=1"}) {
        auto r = admin(f.port(), http::verb::post, std::string{"/v1/config"} + q, "admin-token",
                       R"({"reason":"try","config":)" + with(base, R"("limit": 1000)", R"("limit": 10)") + "}");
        EXPECT_EQ(r.result_int(), 400u) << q << ": " << r.body();
        EXPECT_EQ(code_of(r), "bad_field") << r.body();
    }
    // Narrowing stays an operator's: a lower limit.
    auto lower = try_as_operator(with(base, R"("limit": 1000)", R"("limit": 10)"));
    EXPECT_EQ(lower.result_int(), 200u) << lower.body();
}

// A preset's path written out is not the preset's path: the preset's is also tried with the
// upstream's base path in front (an upstream URL that carries part of the path), the written
// one is not. So the rule may stop matching: a change of mapping, not an operator's to make.
TEST(admin_api, writing_out_a_presets_path_is_a_change_of_mapping) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string base = admin_config(up.port(), dir);
    const std::string rule = R"("id": "recipients", "route": "mail-send",)";
    base.replace(base.find(rule), rule.size(), rule + R"( "preset": "sendgrid.recipients",)");
    proxy_instance bb{base};
    std::string written = base;
    written.replace(written.find(rule), rule.size(), rule + R"( "match": {"path": "/v3/mail/send"},)");
    auto r = admin(bb.server().admin_port(), http::verb::post, "/v1/config?dry_run=1", "op-token",
                   R"({"reason":"tidy","config":)" + written + "}");
    EXPECT_EQ(r.result_int(), 403u) << r.body();
    EXPECT_NE(r.body().find("changes which requests rule recipients meets"), std::string::npos) << r.body();
}

// A change that remaps a rule's traffic while its breaker contains some (the trip would be
// stranded) and a breaker that would reset by itself or sooner are loosenings: admin only.
TEST(admin_api, remapping_a_tripped_rule_or_weakening_a_breakers_reset_needs_the_admin_role) {
    admin_fixture f;
    auto with = [&](const std::string& from, const std::string& to) {
        std::string c = admin_config(f.up.port(), f.dir);
        c.replace(c.find(from), from.size(), to);
        return c;
    };
    const std::string rekeyed = with(R"("key": ["header:x-campaign-id"])", R"("key": ["header:x-campaign-id", "header:x-tenant"])");
    // Changing which requests a rule meets is the admin role's even when nothing is contained.
    auto calm = admin(f.port(), http::verb::post, "/v1/config?dry_run=1", "op-token",
                      "{\"reason\":\"per tenant\",\"config\":" + rekeyed + "}");
    EXPECT_EQ(calm.result_int(), 403u) << calm.body();
    EXPECT_NE(calm.body().find("changes which requests rule recipients meets"), std::string::npos) << calm.body();
    ASSERT_EQ(admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/spring/trip", "op-token",
                    R"({"reason":"misfire"})")
                  .result_int(),
              200u);
    auto stranded = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                          "{\"reason\":\"per tenant\",\"config\":" + rekeyed + "}");
    EXPECT_EQ(stranded.result_int(), 403u) << stranded.body();
    EXPECT_NE(stranded.body().find("changes which requests rule recipients meets"), std::string::npos) << stranded.body();
    EXPECT_EQ(send_mail(f.bb.port(), "spring").result_int(), 503u) << "nothing applied";
    auto by_admin = admin(f.port(), http::verb::post, "/v1/config?dry_run=1", "admin-token",
                          "{\"reason\":\"per tenant\",\"config\":" + rekeyed + "}");
    ASSERT_EQ(by_admin.result_int(), 200u) << by_admin.body();
    EXPECT_NE(by_admin.body().find("campaign-volume/spring is open/auto"), std::string::npos) << by_admin.body();

    const std::string self_resetting = with(R"({"id": "campaign-volume", "action": "pause", "reset": "manual"})",
                                            R"({"id": "campaign-volume", "action": "pause", "reset": "auto", "cooldown": "1s"})");
    auto weaker = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                        "{\"reason\":\"let it heal\",\"config\":" + self_resetting + "}");
    EXPECT_EQ(weaker.result_int(), 403u) << weaker.body();
    auto dry = admin(f.port(), http::verb::post, "/v1/config?dry_run=1", "admin-token",
                     "{\"reason\":\"let it heal\",\"config\":" + self_resetting + "}");
    EXPECT_NE(dry.body().find("breakers[campaign-volume].reset: manual -> auto"), std::string::npos) << dry.body();
    EXPECT_NE(dry.body().find("makes breaker campaign-volume reset by itself"), std::string::npos) << dry.body();
    EXPECT_NE(dry.body().find("shortens the cooldown of breaker campaign-volume"), std::string::npos) << dry.body();
}

TEST(admin_api, every_mutation_is_audited_and_tampering_is_detected) {
    admin_fixture f;
    ASSERT_EQ(admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/a/trip", "op-token",
                    R"({"reason":"first"})")
                  .result_int(),
              200u);
    ASSERT_EQ(admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/a/reset", "op-token",
                    R"({"reason":"second"})")
                  .result_int(),
              200u);
    ASSERT_EQ(admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/b/trip", "admin-token",
                    R"({"reason":"third"})")
                  .result_int(),
              200u);
    admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/b/trip", "view-token", R"({"reason":"denied"})");
    auto log = admin(f.port(), http::verb::get, "/v1/audit", "view-token");
    ASSERT_EQ(log.result_int(), 200u);
    EXPECT_NE(log.body().find("\"actor\":\"ollie-oncall\""), std::string::npos) << log.body();
    EXPECT_NE(log.body().find("\"reason\":\"third\""), std::string::npos);
    EXPECT_NE(log.body().find("\"result\":\"forbidden\""), std::string::npos) << "refusals are audited too";
    auto ok = admin(f.port(), http::verb::get, "/v1/audit/verify", "view-token");
    EXPECT_NE(ok.body().find("\"ok\":true"), std::string::npos) << ok.body();

    // Each act is two entries: its intent ("started", before acting) and its result.
    EXPECT_NE(log.body().find("\"result\":\"started\""), std::string::npos) << log.body();
    // Edit an entry in the SQLite file behind breakerbox's back (id 3: the intent of "second").
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((f.dir + "/bb.db").c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 2000);
    ASSERT_EQ(sqlite3_exec(db, "UPDATE audit SET reason = 'nothing to see' WHERE id = 3", nullptr, nullptr, nullptr),
              SQLITE_OK);
    auto edited = admin(f.port(), http::verb::get, "/v1/audit/verify", "view-token");
    EXPECT_NE(edited.body().find("\"ok\":false"), std::string::npos) << edited.body();
    EXPECT_NE(edited.body().find("\"first_bad\":3"), std::string::npos) << edited.body();
    // Restore it, then delete one instead.
    ASSERT_EQ(sqlite3_exec(db, "UPDATE audit SET reason = 'second' WHERE id = 3", nullptr, nullptr, nullptr), SQLITE_OK);
    EXPECT_NE(admin(f.port(), http::verb::get, "/v1/audit/verify", "view-token").body().find("\"ok\":true"),
              std::string::npos);
    ASSERT_EQ(sqlite3_exec(db, "DELETE FROM audit WHERE id = 3", nullptr, nullptr, nullptr), SQLITE_OK);
    auto deleted = admin(f.port(), http::verb::get, "/v1/audit/verify", "view-token");
    EXPECT_NE(deleted.body().find("\"ok\":false"), std::string::npos) << deleted.body();
    EXPECT_NE(deleted.body().find("missing"), std::string::npos) << deleted.body();
    sqlite3_close(db);
}

// The act is taken but its outcome cannot be recorded: the answer still says what was done
// (a 503 would invite doing it again), flagged as unrecorded.
TEST(admin_api, an_act_whose_outcome_cannot_be_recorded_still_answers_what_was_done) {
    admin_fixture f;
    auto held = send_mail(f.bb.port(), "q", 1, true);
    ASSERT_EQ(held.result_int(), 202u);
    const std::string ticket{held["x-breakerbox-ticket"]};
    // A trip, answered once its writes and every breaker state save asked for before it are
    // done (the hold's trip above): the store is quiet now.
    ASSERT_EQ(admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/b/trip", "op-token",
                    R"({"reason":"settle"})")
                  .result_int(),
              200u);
    // A discard writes its intent, the discard, then the outcome (fails); it changes no breaker.
    f.bb.server().db()->inject_write_fault(SQLITE_IOERR, 1, bb::store::fault_point::first_write, 2);
    auto discard = admin(f.port(), http::verb::post, "/v1/quarantine/" + ticket + "/discard", "op-token",
                         R"({"reason":"outcome unrecorded"})");
    EXPECT_EQ(discard.result_int(), 200u) << discard.body();
    EXPECT_EQ(discard["x-breakerbox-audit"], "unrecorded");
    EXPECT_NE(discard.body().find("\"audit_unrecorded\":"), std::string::npos) << discard.body();
    EXPECT_EQ(f.bb.server().db()->get(ticket)->state, bb::store::held_state::discarded);
}

// A trip that took effect but whose breaker state could not be saved is 503, and the audit
// log says what happened: in effect, not persisted (it used to read as a plain failure,
// "store_unavailable", of a trip that holds traffic).
TEST(admin_api, a_trip_in_effect_but_not_persisted_is_audited_as_such) {
    admin_fixture f;
    // The intent is written; the state save, held back until the trip is in effect, fails
    // once (the outcome's record after it is written).
    f.bb.server().pause_breaker_state_writes(true);
    f.bb.server().db()->inject_write_fault(SQLITE_IOERR, 1, bb::store::fault_point::first_write, 1);
    auto answer = std::async(std::launch::async, [&] {
        return admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/a/trip", "op-token",
                     R"({"reason":"disk trouble"})");
    });
    EXPECT_EQ(answer.wait_for(std::chrono::milliseconds{300}), std::future_status::timeout)
        << "answered before its save";
    f.bb.server().pause_breaker_state_writes(false);
    auto trip = answer.get();
    EXPECT_EQ(trip.result_int(), 503u) << trip.body();
    EXPECT_EQ(code_of(trip), "store_unavailable") << trip.body();
    EXPECT_NE(trip["x-breakerbox-audit"], "unrecorded") << trip.body();
    EXPECT_EQ(f.bb.server().breakers()->get("campaign-volume/a", f.bb.server().now())->st, bb::breakers::state::open);
    ASSERT_TRUE(f.bb.server().flush_breaker_state());  // the store is back
    const auto log = admin(f.port(), http::verb::get, "/v1/audit", "view-token").body();
    EXPECT_NE(log.find("\"result\":\"in effect, not persisted (store_unavailable)\""), std::string::npos) << log;
}

// A refused credential is counted (a token being guessed, or a revoked one still tried,
// shows in /metrics), not only answered 401.
TEST(admin_api, refused_credentials_are_counted) {
    admin_fixture f;
    for (const char* token : {"guess-1", "guess-2"}) {
        EXPECT_EQ(admin(f.port(), http::verb::get, "/v1/breakers", token).result_int(), 401u);
    }
    const auto text = admin(f.port(), http::verb::get, "/metrics", "view-token").body();
    EXPECT_NE(text.find("breakerbox_admin_actions_total{endpoint=\"/v1/breakers\",status=\"401\"} 2"),
              std::string::npos)
        << text;
}

// A config change whose version cannot be stored is not applied: the versions (base_version,
// rollback) always number what runs.
TEST(admin_api, a_config_change_whose_version_cannot_be_stored_is_not_applied) {
    admin_fixture f;
    std::string lower = admin_config(f.up.port(), f.dir);
    lower.replace(lower.find(R"("limit": 1000)"), 13, R"("limit": 10)");
    // The intent is written, then the version (fails).
    f.bb.server().db()->inject_write_fault(SQLITE_IOERR, 1, bb::store::fault_point::first_write, 1);
    auto r = admin(f.port(), http::verb::post, "/v1/config", "op-token", R"({"reason":"tighten","config":)" + lower + "}");
    EXPECT_EQ(r.result_int(), 503u) << r.body();
    EXPECT_EQ(code_of(r), "store_unavailable") << r.body();
    EXPECT_EQ(f.bb.server().current_config()->rules->rules[0].limit, 1000) << "the running config is unchanged";
    auto again = admin(f.port(), http::verb::post, "/v1/config", "op-token", R"({"reason":"tighten","config":)" + lower + "}");
    EXPECT_EQ(again.result_int(), 200u) << again.body();
    EXPECT_EQ(f.bb.server().current_config()->rules->rules[0].limit, 10);
    EXPECT_EQ(again.body().find("\"version\":0"), std::string::npos) << again.body();
}

// The version GET gives is the running config's: one stored but not (yet) applied is not
// paired with the config that runs, so a change made from that pair cannot pass base_version.
TEST(admin_api, get_config_never_pairs_a_stored_version_with_another_running_config) {
    admin_fixture f;
    std::string first = admin_config(f.up.port(), f.dir);
    first.replace(first.find(R"("limit": 1000)"), 13, R"("limit": 100)");
    ASSERT_EQ(admin(f.port(), http::verb::post, "/v1/config", "op-token", R"({"reason":"r","config":)" + first + "}")
                  .result_int(),
              200u);
    auto before = admin(f.port(), http::verb::get, "/v1/config", "op-token");
    ASSERT_EQ(before.result_int(), 200u);
    EXPECT_EQ(before.body().find("\"version\":0"), std::string::npos) << before.body();
    std::string next = admin_config(f.up.port(), f.dir);
    next.replace(next.find(R"("limit": 1000)"), 13, R"("limit": 10)");
    // What the apply does between storing the version and running it.
    std::promise<bb::store::result> stored;
    f.bb.server().db()->save_config_version(next, "ollie-oncall", "tighten",
                                            [&](const bb::store::result& r) { stored.set_value(r); });
    ASSERT_TRUE(stored.get_future().get().ok);
    auto during = admin(f.port(), http::verb::get, "/v1/config", "op-token");
    EXPECT_NE(during.body().find("\"version\":0,"), std::string::npos) << during.body();
    auto from_it = admin(f.port(), http::verb::post, "/v1/config", "op-token",
                         R"({"reason":"r","base_version":0,"config":)" + admin_config(f.up.port(), f.dir) + "}");
    EXPECT_EQ(from_it.result_int(), 409u) << from_it.body();
}

// Write-ahead audit: when the intent cannot be recorded, nothing is done.
TEST(admin_api, an_act_whose_audit_record_cannot_be_written_is_not_taken) {
    admin_fixture f;
    f.bb.server().db()->inject_write_fault(SQLITE_IOERR, 1);
    auto trip = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/a/trip", "op-token",
                      R"({"reason":"unaudited?"})");
    EXPECT_EQ(trip.result_int(), 503u) << trip.body();
    EXPECT_EQ(code_of(trip), "store_unavailable");
    auto snap = f.bb.server().breakers()->get("campaign-volume/a", f.bb.server().now());
    ASSERT_TRUE(snap);
    EXPECT_EQ(snap->st, bb::breakers::state::closed) << "the breaker was tripped without an audit record";
    // The store is back: the same call works and is recorded.
    auto again = admin(f.port(), http::verb::post, "/v1/breakers/campaign-volume/a/trip", "op-token",
                       R"({"reason":"now audited"})");
    EXPECT_EQ(again.result_int(), 200u) << again.body();
    EXPECT_NE(admin(f.port(), http::verb::get, "/v1/audit", "view-token").body().find("now audited"), std::string::npos);
}

// Periodic saves (meters, keys of requests sent live) stretched to an hour: only the test's
// own saves run.
struct no_periodic_saves {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    std::string dir = temp_dir();
    proxy_instance bb{admin_config(up.port(), dir), nullptr, std::chrono::hours{1}};
    std::uint16_t port() { return bb.server().admin_port(); }
};

// The rules' counts are saved for a restart (every second and at shutdown); a save that
// fails shows in /metrics until one succeeds, and the next one carries the counts.
TEST(admin_api, a_failed_save_of_the_rule_meters_shows_in_metrics_until_one_succeeds) {
    no_periodic_saves f;
    auto gauge = [&] {
        const auto text = admin(f.port(), http::verb::get, "/metrics", "view-token").body();
        const auto at = text.find("\nbreakerbox_rule_meters_unsaved ");
        return at == std::string::npos ? std::string{"missing"} : text.substr(at + 32, 1);
    };
    send_mail(f.bb.port(), "m");
    ASSERT_TRUE(f.bb.server().save_meters(true));
    EXPECT_EQ(gauge(), "0");
    send_mail(f.bb.port(), "m");
    f.bb.server().db()->inject_write_fault(SQLITE_IOERR, 1'000'000);
    EXPECT_FALSE(f.bb.server().save_meters(true));
    EXPECT_EQ(gauge(), "1");
    f.bb.server().db()->inject_write_fault(SQLITE_IOERR, 0);
    EXPECT_TRUE(f.bb.server().save_meters(true));
    EXPECT_EQ(gauge(), "0");
    // Nothing changed since: nothing is written.
    const auto before = f.bb.server().db()->stats().transactions;
    EXPECT_TRUE(f.bb.server().save_meters(true));
    EXPECT_EQ(f.bb.server().db()->stats().transactions, before);
    std::string err;
    const auto saved = f.bb.server().db()->load_meters(bb::real_clock{}, &err);
    ASSERT_TRUE(saved) << err;
    ASSERT_EQ(saved->size(), 1u);
    const auto& m = (*saved)[0];
    EXPECT_EQ(m.rule_id, "recipients");
    bb::rules::engine fresh{f.bb.server().current_runtime()->engine->rules_ptr()};
    ASSERT_TRUE(fresh.restore_meters({{m.rule_id, m.fingerprint, m.state, m.offset}}, f.bb.server().now(), &err)) << err;
    EXPECT_EQ(fresh.read("recipients", "m", f.bb.server().now())->value, 2) << "both sends are in the saved counts";
}

// The keys of requests sent live are saved the same way: how many are remembered, how many
// were forgotten young for the bound, and whether the last save failed, in /metrics.
TEST(admin_api, the_keys_of_requests_sent_live_show_in_metrics) {
    no_periodic_saves f;
    auto metric = [&](const std::string& name) { return metric_value(f.port(), name); };
    EXPECT_EQ(metric("breakerbox_forwarded_keys"), "0");
    EXPECT_EQ(metric("breakerbox_forwarded_keys_dropped_young_total"), "0");
    auto send = [&](const std::string& key) {
        return http_request(f.bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", "m"}, {"idempotency-key", key}});
    };
    ASSERT_EQ(send("k-1").result_int(), 202u);
    ASSERT_EQ(send("k-2").result_int(), 202u);
    EXPECT_EQ(metric("breakerbox_forwarded_keys"), "2");
    f.bb.server().db()->inject_write_fault(SQLITE_IOERR, 1'000'000);
    EXPECT_FALSE(f.bb.server().save_forwarded_keys(true));
    EXPECT_EQ(metric("breakerbox_forwarded_keys_unsaved"), "1");
    f.bb.server().db()->inject_write_fault(SQLITE_IOERR, 0);
    EXPECT_TRUE(f.bb.server().save_forwarded_keys(true));
    EXPECT_EQ(metric("breakerbox_forwarded_keys_unsaved"), "0");
}

// What was booked after the last periodic save is saved at shutdown (the periodic save is
// stretched to an hour here, so only the one at shutdown can have written it).
TEST(admin_api, the_counts_booked_since_the_last_periodic_save_are_saved_at_shutdown) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{admin_config(up.port(), dir), nullptr, std::chrono::hours{1}};
    send_mail(bb.port(), "m");
    send_mail(bb.port(), "m");
    bb.stop();
    EXPECT_EQ(bb.exit_code(), 0);
    bb::real_clock clock;
    std::string err;
    const auto saved = bb.server().db()->load_meters(clock, &err);  // the stopped server's store
    ASSERT_TRUE(saved) << err;
    ASSERT_EQ(saved->size(), 1u);
    const auto& m = (*saved)[0];
    bb::rules::engine fresh{bb.cfg()->rules};
    ASSERT_TRUE(fresh.restore_meters({{m.rule_id, m.fingerprint, m.state, m.offset}}, clock.now(), &err)) << err;
    ASSERT_TRUE(fresh.read("recipients", "m", clock.now()));
    EXPECT_EQ(fresh.read("recipients", "m", clock.now())->value, 2);
}

// Counters stay with their route's name when a reload inserts a route before it.
TEST(admin_api, route_counters_follow_their_route_across_a_reload) {
    admin_fixture f;
    send_mail(f.bb.port(), "m");
    send_mail(f.bb.port(), "m");
    auto scrape_until = [&](const std::string& want) {
        response res;
        for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds{5}; std::chrono::steady_clock::now() < until;) {  // counted once the response is out: a scrape may be early
            res = admin(f.port(), http::verb::get, "/metrics", "view-token");
            if (res.body().find(want) != std::string::npos) {
                break;
            }
            std::this_thread::yield();
        }
        return res.body();
    };
    const std::string two = "breakerbox_requests_total{route=\"mail-send\",decision=\"allowed\"} 2";
    ASSERT_NE(scrape_until(two).find(two), std::string::npos);
    std::string next = admin_config(f.up.port(), f.dir);
    const std::string routes = "\"routes\": [";
    next.insert(next.find(routes) + routes.size(),
                "{\"name\": \"first\", \"match\": {\"path_prefix\": \"/v9/\"}, \"upstream\": \"sendgrid\"},");
    const auto applied = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"new route\",\"config\":" + next + "}");
    ASSERT_EQ(applied.result_int(), 200u) << applied.body();
    send_mail(f.bb.port(), "m");
    const std::string three = "breakerbox_requests_total{route=\"mail-send\",decision=\"allowed\"} 3";
    const auto text = scrape_until(three);
    EXPECT_NE(text.find(three), std::string::npos) << text;
    EXPECT_NE(text.find("breakerbox_requests_total{route=\"first\",decision=\"allowed\"} 0"), std::string::npos) << text;
}

TEST(admin_api, metrics_pass_promtool) {
    admin_fixture f;
    send_mail(f.bb.port(), "m");
    send_mail(f.bb.port(), "m", 1, true);
    // A key in Latin-1, not UTF-8: Prometheus refuses a whole scrape over one such byte.
    send_mail(f.bb.port(), "caf\xE9");
    http_request(f.bb.port(), http::verb::get, "/nowhere");
    // Requests are counted once their response is out: a scrape right after may be early.
    response res;
    for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds{5}; std::chrono::steady_clock::now() < until;) {
        res = admin(f.port(), http::verb::get, "/metrics", "view-token");
        const auto& b = res.body();
        if (b.find("decision=\"allowed\"} 2") != std::string::npos &&
            b.find("decision=\"quarantined\"} 1") != std::string::npos &&
            b.find("route=\"\",decision=\"rejected\"} 1") != std::string::npos) {
            break;
        }
        std::this_thread::yield();
    }
    ASSERT_EQ(res.result_int(), 200u);
    EXPECT_NE(res[http::field::content_type].find("text/plain"), std::string::npos);
    const auto& text = res.body();
    EXPECT_NE(text.find("breakerbox_requests_total{route=\"mail-send\",decision=\"allowed\"} 2"), std::string::npos) << text;
    // The key as an operator can type it back (rules/engine.cpp), not as U+FFFD.
    EXPECT_NE(text.find("breakerbox_rule_meter_value{rule=\"recipients\",key=\"caf%E9\"} 1"), std::string::npos)
        << text;
    EXPECT_NE(text.find("breakerbox_requests_total{route=\"mail-send\",decision=\"quarantined\"} 1"), std::string::npos);
    EXPECT_NE(text.find("breakerbox_upstream_latency_seconds_bucket{upstream=\"sendgrid\",le=\"+Inf\"} 2"),
              std::string::npos);
    EXPECT_NE(text.find("breakerbox_quarantine_held 1"), std::string::npos);
    EXPECT_NE(text.find("\nbreakerbox_audit_entries "), std::string::npos);
    EXPECT_NE(text.find("breakerbox_breaker_state{breaker=\"held\""), std::string::npos);
    EXPECT_NE(text.find("breakerbox_rule_limit{rule=\"recipients\"} 1000"), std::string::npos);
    // Both mails: the held one counts too (a release sends it without judging it again).
    EXPECT_NE(text.find("breakerbox_rule_meter_value{rule=\"recipients\",key=\"m\"} 2"), std::string::npos) << text;
    const std::string file = f.dir + "/metrics.txt";
    std::ofstream{file} << text;
    if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
        FAIL() << "promtool is not installed: scripts/setup.sh installs it (package prometheus)";
    }
    const std::string cmd = "promtool check metrics < " + file + " 2>&1";
    FILE* pipe = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[512];
    while (pipe && std::fgets(buf, sizeof buf, pipe)) {
        out += buf;
    }
    const int rc = pipe ? ::pclose(pipe) : -1;
    EXPECT_EQ(rc, 0) << out;
}

// breakerbox_breaker_trips_total counts trips since the process started: a reload that
// rebuilds the registry drops the closed instances (and a full breaker evicts them), and the
// counter used to be the sum over the instances alive, so it went down and Prometheus read a
// reset (an increase() alert on new trips fired for nothing).
TEST(admin_api, the_trips_counter_never_goes_down) {
    admin_fixture f;
    auto trips = [&] {
        const auto text = admin(f.port(), http::verb::get, "/metrics", "view-token").body();
        const std::string name = "breakerbox_breaker_trips_total{breaker=\"campaign-volume\"} ";
        const auto at = text.find(name);
        return at == std::string::npos ? std::string{"missing"} : text.substr(at + name.size(), text.find('\n', at) - at - name.size());
    };
    for (const char* key : {"a", "b"}) {
        ASSERT_EQ(admin(f.port(), http::verb::post, std::string{"/v1/breakers/campaign-volume/"} + key + "/trip",
                        "op-token", R"({"reason":"r"})")
                      .result_int(),
                  200u);
        ASSERT_EQ(admin(f.port(), http::verb::post, std::string{"/v1/breakers/campaign-volume/"} + key + "/reset",
                        "op-token", R"({"reason":"r"})")
                      .result_int(),
                  200u);
    }
    EXPECT_EQ(trips(), "2");
    // A change to the breaker rebuilds the registry; the closed instances are not carried.
    std::string next = admin_config(f.up.port(), f.dir);
    const std::string cv = R"("id": "campaign-volume", "action": "pause", "reset": "manual")";
    ASSERT_NE(next.find(cv), std::string::npos);
    next.replace(next.find(cv), cv.size(), cv + R"(, "cooldown": "2m")");
    const auto applied = admin(f.port(), http::verb::post, "/v1/config", "admin-token",
                               "{\"reason\":\"longer cooldown\",\"config\":" + next + "}");
    ASSERT_EQ(applied.result_int(), 200u) << applied.body();
    EXPECT_EQ(trips(), "2");
}

// Closed keyed instances stay in memory until their breaker is full; a thousand of them
// (old campaign keys) used to fill breakerbox_breaker_state's 1000 lines in name order and
// push out every breaker sorting later, open ones included.
TEST(admin_api, breaker_state_lists_what_contains_before_closed_keys) {
    admin_fixture f;
    auto& reg = *f.bb.server().breakers();
    const auto now = f.bb.server().now();
    for (int i = 0; i < 1001; ++i) {
        const std::string name = "campaign-volume/k" + std::to_string(10000 + i);
        ASSERT_TRUE(reg.manual_trip(name, "ops", "r", now));
        ASSERT_TRUE(reg.reset(name, "ops", "r", now));
    }
    ASSERT_TRUE(reg.manual_trip("held", "ops", "misfire", now));
    const auto text = admin(f.port(), http::verb::get, "/metrics", "view-token").body();
    EXPECT_NE(text.find("breakerbox_breaker_state{breaker=\"held\",instance=\"held\",mode=\"auto\"} 1"),
              std::string::npos)
        << text.substr(text.find("# TYPE breakerbox_breaker_state"), 600);
    std::size_t lines = 0;
    for (auto at = text.find("breakerbox_breaker_state{"); at != std::string::npos;
         at = text.find("breakerbox_breaker_state{", at + 1)) {
        ++lines;
    }
    EXPECT_EQ(lines, 1000u) << "the closed keys fill the rest";
}

// Keyed instances that contain come from clients' keys too (an agent looping over fresh
// campaign ids on a breaker reset by hand): bounded like the rest, breaker-wide instances
// first, and every one counted by state.
TEST(admin_api, open_keyed_instances_are_bounded_in_metrics_and_counted) {
    admin_fixture f;
    auto& reg = *f.bb.server().breakers();
    const auto now = f.bb.server().now();
    for (int i = 0; i < 1200; ++i) {
        ASSERT_TRUE(reg.manual_trip("campaign-volume/k" + std::to_string(10000 + i), "ops", "r", now));
    }
    ASSERT_TRUE(reg.manual_trip("held", "ops", "misfire", now));
    const auto text = admin(f.port(), http::verb::get, "/metrics", "view-token").body();
    EXPECT_NE(text.find("breakerbox_breaker_state{breaker=\"held\",instance=\"held\",mode=\"auto\"} 1"),
              std::string::npos);
    std::size_t lines = 0;
    for (auto at = text.find("breakerbox_breaker_state{"); at != std::string::npos;
         at = text.find("breakerbox_breaker_state{", at + 1)) {
        ++lines;
    }
    EXPECT_EQ(lines, 1000u);
    EXPECT_NE(text.find("breakerbox_breaker_instances_by_state{breaker=\"campaign-volume\",state=\"open\"} 1200"),
              std::string::npos)
        << text.substr(text.find("# TYPE breakerbox_breaker_instances_by_state"), 600);
    EXPECT_NE(text.find("breakerbox_breaker_instances_by_state{breaker=\"held\",state=\"open\"} 1"), std::string::npos);
}

namespace {

std::string run(const std::string& cmd, int* rc) {
    FILE* pipe = ::popen((cmd + " 2>&1").c_str(), "r");
    std::string out;
    char buf[512];
    while (pipe && std::fgets(buf, sizeof buf, pipe)) {
        out += buf;
    }
    *rc = pipe ? ::pclose(pipe) : -1;
    return out;
}

std::string cert(const char* name) {
    return std::string{BB_TEST_CERTS_DIR} + "/" + name;
}

}  // namespace

// A client certificate's role is looked up per request: once an admin removes its mapping,
// a connection that is still open has no identity left.
TEST(admin_api, a_removed_certificate_mapping_ends_that_identity_on_an_open_connection) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    auto with_tls = [&](bool mapped) {
        std::string c = admin_config(up.port(), dir);
        c.insert(c.find("\"admin\": {") + 10,
                 "\"tls\": {\"cert_file\": \"" + cert("server.pem") + "\", \"key_file\": \"" + cert("server.key") +
                     "\", \"client_ca_file\": \"" + cert("ca.pem") + "\"}, " +
                     (mapped ? "\"client_certs\": [{\"name\": \"cert-admin\", \"subject_cn\": \"agent-one\", \"role\": \"admin\"}], "
                             : ""));
        return c;
    };
    proxy_instance bb{with_tls(true)};
    int rc = 0;
    if (run("command -v curl", &rc), rc != 0) {
        FAIL() << "curl is not installed: scripts/setup.sh installs it";
    }
    const std::string base = "https://127.0.0.1:" + std::to_string(bb.server().admin_port());
    const std::string id = "--cacert " + cert("ca.pem") + " --cert " + cert("agent-agent-one.pem") + " --key " +
                           cert("agent-agent-one.key") + " -s -o /dev/null -w '%{http_code} %{num_connects}\\n' ";
    const std::string body_file = dir + "/unmapped.json";
    {
        std::ofstream f{body_file};
        f << "{\"reason\":\"revoke\",\"config\":" << with_tls(false) << "}";
    }
    // One curl, one connection: the mapping goes, then the same connection asks again.
    auto out = run("curl " + id + "-X POST -H 'content-type: application/json' --data-binary @" + body_file + " " + base +
                       "/v1/config --next " + id + base + "/v1/breakers",
                   &rc);
    EXPECT_NE(out.find("200 1\n401 0"), std::string::npos) << "second request reused the connection and lost its role: "
                                                          << out;
}

// A client certificate that expires while its connection stays open identifies nobody there
// from then on (the wall clock is a manual one, stepped to the certificate's last valid second,
// then past it).
TEST(admin_api, a_client_certificate_that_expires_on_an_open_connection_identifies_nobody) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string c = admin_config(up.port(), dir);
    c.insert(c.find("\"admin\": {") + 10,
             "\"tls\": {\"cert_file\": \"" + cert("server.pem") + "\", \"key_file\": \"" + cert("server.key") +
                 "\", \"client_ca_file\": \"" + cert("ca.pem") +
                 "\"}, \"client_certs\": [{\"name\": \"cert-admin\", \"subject_cn\": \"agent-one\", \"role\": \"admin\"}], ");
    bb::manual_clock clock;
    proxy_instance bb{c, &clock};
    keep_alive_tls kept{bb.server().admin_port(), cert("ca.pem"), cert("agent-agent-one.pem"), cert("agent-agent-one.key")};
    const auto before = kept.get("/v1/breakers");
    ASSERT_EQ(before.rfind("HTTP/1.1 200", 0), 0u) << before;
    step_wall_past(clock, {cert("agent-agent-one.pem"), cert("ca.pem")}, std::chrono::seconds{-1});
    ASSERT_EQ(kept.get("/v1/breakers").rfind("HTTP/1.1 200", 0), 0u) << "valid through its last second";
    step_wall_past(clock, {cert("agent-agent-one.pem"), cert("ca.pem")});
    const auto after = kept.get("/v1/breakers");
    EXPECT_EQ(after.rfind("HTTP/1.1 401", 0), 0u) << after;
}

// A mapping can pin one certificate (its SHA-256): another certificate the same CA issued
// with the same CN (an agent's, say) is then nobody to the admin API.
TEST(admin_api, a_pinned_client_certificate_mapping_takes_only_that_certificate) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    int rc = 0;
    if (run("command -v curl", &rc), rc != 0) {
        FAIL() << "curl is not installed: scripts/setup.sh installs it";
    }
    auto fp = run("openssl x509 -in " + cert("agent-agent-one.pem") + " -noout -fingerprint -sha256", &rc);
    ASSERT_EQ(rc, 0) << fp;
    fp = fp.substr(fp.find('=') + 1);
    fp.erase(fp.find_last_not_of("\r\n") + 1);
    ASSERT_EQ(fp.size(), 95u) << fp;  // AB:CD:... 32 bytes
    auto config_pinned = [&](const std::string& pin) {
        std::string c = admin_config(up.port(), dir);
        c.insert(c.find("\"admin\": {") + 10,
                 "\"tls\": {\"cert_file\": \"" + cert("server.pem") + "\", \"key_file\": \"" + cert("server.key") +
                     "\", \"client_ca_file\": \"" + cert("ca.pem") +
                     "\"}, \"client_certs\": [{\"name\": \"cert-ops\", \"subject_cn\": \"agent-one\", \"cert_sha256\": \"" + pin +
                     "\", \"role\": \"operator\"}], ");
        return c;
    };
    const std::string curl = "curl -s -o /dev/null -w '%{http_code}' --cacert " + cert("ca.pem") + " --cert " +
                             cert("agent-agent-one.pem") + " --key " + cert("agent-agent-one.key") + " ";
    {
        proxy_instance bb{config_pinned(fp)};
        const std::string base = "https://127.0.0.1:" + std::to_string(bb.server().admin_port());
        EXPECT_EQ(run(curl + base + "/v1/breakers", &rc), "200");
    }
    {
        std::string other = fp;
        other[0] = other[0] == 'A' ? 'B' : 'A';  // another certificate's pin, same CN
        proxy_instance bb{config_pinned(other)};
        const std::string base = "https://127.0.0.1:" + std::to_string(bb.server().admin_port());
        EXPECT_EQ(run(curl + base + "/v1/breakers", &rc), "401") << "a certificate other than the pinned one got in";
    }
    auto bad = bb::parse_config(config_pinned("not-a-digest"));
    EXPECT_NE(bad.errors.to_string().find("cert_sha256"), std::string::npos) << bad.errors.to_string();
}

// A config change through the API reloads the admin API's TLS files as SIGHUP does: a
// rotated client CA (the old one leaked) stops letting the old CA's certificates in.
TEST(admin_api, an_api_reload_rotates_the_admin_client_ca) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    int rc = 0;
    if (run("command -v curl", &rc), rc != 0) {
        FAIL() << "curl is not installed: scripts/setup.sh installs it";
    }
    std::filesystem::copy_file(cert("ca.pem"), dir + "/operators-ca.pem");
    std::string cfg = admin_config(up.port(), dir);
    cfg.insert(cfg.find("\"admin\": {") + 10,
               "\"tls\": {\"cert_file\": \"" + cert("server.pem") + "\", \"key_file\": \"" + cert("server.key") +
                   "\", \"client_ca_file\": \"" + dir + "/operators-ca.pem\"}, \"client_certs\": [{\"name\": \"cert-ops\", "
                   "\"subject_cn\": \"agent-one\", \"role\": \"operator\"}], ");
    proxy_instance bb{cfg};
    const std::string base = "https://127.0.0.1:" + std::to_string(bb.server().admin_port());
    const std::string curl = "curl -s -o /dev/null -w '%{http_code}' --cacert " + cert("ca.pem") + " ";
    const std::string with_cert = curl + "--cert " + cert("agent-agent-one.pem") + " --key " + cert("agent-agent-one.key") + " ";
    EXPECT_EQ(run(with_cert + base + "/v1/breakers", &rc), "200");
    // A keep-alive connection opened with the certificate before the rotation.
    keep_alive_tls kept{bb.server().admin_port(), cert("ca.pem"), cert("agent-agent-one.pem"), cert("agent-agent-one.key")};
    EXPECT_EQ(kept.get("/v1/breakers").rfind("HTTP/1.1 200", 0), 0u);
    // The operators' CA file now holds another CA; the config itself is unchanged.
    std::filesystem::copy_file(cert("self-signed.pem"), dir + "/operators-ca.pem",
                               std::filesystem::copy_options::overwrite_existing);
    {
        std::ofstream f{dir + "/same.json"};
        f << "{\"reason\":\"rotate the operator CA\",\"config\":" << cfg << "}";
    }
    const auto applied = run(curl + "-H 'Authorization: Bearer admin-token' -H 'content-type: application/json' "
                                    "--data-binary @" + dir + "/same.json " + base + "/v1/config",
                             &rc);
    EXPECT_EQ(applied, "200");
    EXPECT_NE(run(with_cert + base + "/v1/breakers", &rc), "200") << "a certificate of the rotated-out CA still got in";
    const auto on_kept = kept.get("/v1/breakers");
    EXPECT_EQ(on_kept.rfind("HTTP/1.1 401", 0), 0u) << "nor on a connection opened before: " << on_kept;
    EXPECT_EQ(run(curl + "-H 'Authorization: Bearer view-token' " + base + "/v1/breakers", &rc), "200");
}

TEST(admin_api, tls_with_client_certificates_mapping_to_operators) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = admin_config(up.port(), dir);
    const std::string tls = "\"tls\": {\"cert_file\": \"" + cert("server.pem") + "\", \"key_file\": \"" +
                            cert("server.key") + "\", \"client_ca_file\": \"" + cert("ca.pem") +
                            "\"}, \"client_certs\": [{\"name\": \"cert-ops\", \"subject_cn\": \"agent-one\", "
                            "\"role\": \"operator\"}], ";
    cfg.insert(cfg.find("\"admin\": {") + 10, tls);
    proxy_instance bb{cfg};
    const std::string base = "https://127.0.0.1:" + std::to_string(bb.server().admin_port());
    int rc = 0;
    if (run("command -v curl", &rc), rc != 0) {
        FAIL() << "curl is not installed: scripts/setup.sh installs it";
    }
    const std::string curl = "curl -s -o /dev/stderr -w '%{http_code}' --cacert " + cert("ca.pem") + " ";
    auto out = run(curl + "-H 'Authorization: Bearer view-token' " + base + "/v1/breakers", &rc);
    EXPECT_NE(out.find("\"breakers\""), std::string::npos) << out;
    EXPECT_NE(out.find("200"), std::string::npos) << out;
    out = run(curl + base + "/v1/breakers", &rc);
    EXPECT_NE(out.find("401"), std::string::npos) << out;
    // The client certificate alone identifies an operator.
    out = run(curl + "--cert " + cert("agent-agent-one.pem") + " --key " + cert("agent-agent-one.key") +
                  " -X POST -H 'content-type: application/json' -d '{\"reason\":\"via mTLS\"}' " + base +
                  "/v1/breakers/campaign-volume/x/trip",
              &rc);
    EXPECT_NE(out.find("\"state\":\"open\""), std::string::npos) << out;
    auto log = run(curl + "-H 'Authorization: Bearer view-token' " + base + "/v1/audit", &rc);
    EXPECT_NE(log.find("\"actor\":\"cert-ops\""), std::string::npos) << log;
#ifdef BB_BREAKERCTL_BIN
    // breakerctl authenticates with the same client certificate.
    out = run(std::string{BB_BREAKERCTL_BIN} + " --admin " + base + " --cacert " + cert("ca.pem") + " --cert " +
                  cert("agent-agent-one.pem") + " --key " + cert("agent-agent-one.key") +
                  " reset campaign-volume/x --reason 'checked via breakerctl'",
              &rc);
    EXPECT_EQ(rc, 0) << out;
    out = run(std::string{BB_BREAKERCTL_BIN} + " --admin " + base + " --cacert " + cert("ca.pem") + " breakers", &rc);
    EXPECT_NE(rc, 0) << "without a certificate or a token: " << out;
#endif
    // Old protocol versions are refused.
    out = run("echo | openssl s_client -tls1_1 -connect 127.0.0.1:" + std::to_string(bb.server().admin_port()), &rc);
    EXPECT_NE(rc, 0) << out;
    out = run("echo | openssl s_client -tls1_2 -CAfile " + cert("ca.pem") + " -connect 127.0.0.1:" +
                  std::to_string(bb.server().admin_port()),
              &rc);
    EXPECT_NE(out.find("Verify return code: 0 (ok)"), std::string::npos) << out;
}
