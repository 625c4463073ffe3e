#include "config/config.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <thread>
#include <sys/stat.h>
#include <unistd.h>

using bb::parse_config;

namespace {

std::string all_errors(const bb::parse_result& r) {
    return r.errors.to_string();
}

std::string base(const std::string& extra = "") {
    return R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
               "upstreams": [{"name": "up", "url": "http://127.0.0.1:9000"}],
               "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}])" +
           extra + "}";
}

}  // namespace

TEST(durations, parse_and_format) {
    using namespace std::chrono_literals;
    EXPECT_EQ(bb::cfg::parse_duration("250ms"), 250ms);
    EXPECT_EQ(bb::cfg::parse_duration("30s"), 30s);
    EXPECT_EQ(bb::cfg::parse_duration("15m"), 15min);
    EXPECT_EQ(bb::cfg::parse_duration("1h"), 1h);
    EXPECT_EQ(bb::cfg::parse_duration("7d"), 168h);
    for (const char* bad : {"", "1x", "s", "-1s", "1.5s", "1 s", "10"}) {
        EXPECT_FALSE(bb::cfg::parse_duration(bad)) << bad;
    }
    EXPECT_EQ(bb::cfg::format_duration(90s), "90s");
    EXPECT_EQ(bb::cfg::format_duration(2h), "2h");
    EXPECT_EQ(bb::cfg::format_duration(1500ms), "1500ms");
}

// quote() writes JSON that strict parsers (log pipelines, simdjson) accept whatever the input.
TEST(quote, is_always_valid_utf8_json) {
    EXPECT_EQ(bb::cfg::quote("a\"b\\c\n\x01\x7f"), R"("a\"b\\c\n\u0001\u007f")");
    EXPECT_EQ(bb::cfg::quote("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    // Latin-1, a cut sequence, overlong forms, a surrogate, above U+10FFFF, a stray continuation.
    EXPECT_EQ(bb::cfg::quote("caf\xe9"), R"("caf\ufffd")");
    EXPECT_EQ(bb::cfg::quote("x\xe2\x82"), R"("x\ufffd\ufffd")");
    EXPECT_EQ(bb::cfg::quote("\xc0\xaf\xe0\x80\xaf"), R"("\ufffd\ufffd\ufffd\ufffd\ufffd")");
    EXPECT_EQ(bb::cfg::quote("\xed\xa0\x80"), R"("\ufffd\ufffd\ufffd")");
    EXPECT_EQ(bb::cfg::quote("\xf4\x90\x80\x80"), R"("\ufffd\ufffd\ufffd\ufffd")");
    EXPECT_EQ(bb::cfg::quote("\x80z"), R"("\ufffdz")");
    simdjson::dom::parser p;
    std::string all;
    for (int b = 0; b < 256; ++b) {
        all += static_cast<char>(b);
        all += static_cast<char>(255 - b);
    }
    const std::string q = bb::cfg::quote(all);
    EXPECT_FALSE(p.parse(q).error()) << "not valid JSON";
}

TEST(config, minimal_config_has_the_documented_defaults) {
    auto r = parse_config(base());
    ASSERT_TRUE(r.errors.empty()) << all_errors(r);
    EXPECT_EQ(r.cfg->limits.header_bytes, 32u * 1024);
    EXPECT_EQ(r.cfg->limits.header_count, 100u);
    EXPECT_EQ(r.cfg->limits.body_bytes, 10u * 1024 * 1024);
    EXPECT_EQ(r.cfg->limits.header_timeout, std::chrono::seconds{10});
    EXPECT_EQ(r.cfg->upstreams[0].authority, "127.0.0.1:9000");
    EXPECT_EQ(r.cfg->store.breaker_state_path(), "var/breakerbox.breakers.json");
}

// How many keys of requests sent live are remembered: the default, a setting, and bounds.
TEST(config, store_idempotency_keys) {
    EXPECT_EQ(parse_config(base()).cfg->store.idempotency_keys, 200000u);
    auto set = parse_config(base(R"(, "store": {"idempotency_keys": 2000000})"));
    ASSERT_TRUE(set.errors.empty()) << all_errors(set);
    EXPECT_EQ(set.cfg->store.idempotency_keys, 2000000u);
    for (const char* bad : {"5", "60000000", "\"1e6\""}) {
        const auto e = all_errors(parse_config(base(std::string{R"(, "store": {"idempotency_keys": )"} + bad + "}")));
        EXPECT_NE(e.find("store.idempotency_keys"), std::string::npos) << bad << ": " << e;
    }
}

// A syntax error says where it is: a stray comma in a long file is found by its line.
TEST(config, a_json_syntax_error_names_its_line) {
    const std::string text = "{\n  \"listeners\": [{\"name\": \"a\", \"address\": \"127.0.0.1:1\"}],\n"
                             "  \"upstreams\": [{\"name\": \"u\", \"url\": \"http://127.0.0.1:2\"},],\n"
                             "  \"routes\": []\n}\n";
    auto r = parse_config(text);
    ASSERT_FALSE(r.errors.empty());
    const auto all = r.errors.to_string();
    EXPECT_NE(all.find("is not valid JSON"), std::string::npos) << all;
    EXPECT_NE(all.find("near line 3, column "), std::string::npos) << all;
    auto unclosed = parse_config("{\"listeners\": \"abc");
    ASSERT_FALSE(unclosed.errors.empty());
    EXPECT_NE(unclosed.errors.to_string().find("is not valid JSON"), std::string::npos);
}

TEST(config, names_must_be_unique_and_references_known) {
    auto r = parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:1"}, {"name": "a", "address": "127.0.0.1:2"}],
        "upstreams": [{"name": "up", "url": "https://api.example.com/base/"}, {"name": "up", "url": "http://x"}],
        "routes": [{"name": "r", "match": {"path": "/a", "path_prefix": "/b", "methods": ["P OST"]}, "upstream": "nope"}]})");
    const auto e = all_errors(r);
    EXPECT_NE(e.find("listeners[1].name: \"a\" is used by another listener"), std::string::npos) << e;
    EXPECT_NE(e.find("upstreams[1].name: \"up\" is used by another upstream"), std::string::npos) << e;
    EXPECT_NE(e.find("routes[0].match.path: give either path or path_prefix"), std::string::npos) << e;
    EXPECT_NE(e.find("routes[0].match.methods[0]: \"P OST\" is not an HTTP method"), std::string::npos) << e;
    EXPECT_NE(e.find("routes[0].upstream: \"nope\" is not a configured upstream"), std::string::npos) << e;
}

// Every acceptor sets SO_REUSEPORT: two listeners on one socket would both bind and split
// the connections (half of an agent listener's traffic without require_agent).
TEST(config, listeners_may_not_share_a_socket) {
    const std::string tail = R"(], "upstreams": [{"name": "up", "url": "http://127.0.0.1:9"}],
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}])";
    auto listeners = [&](const std::string& items, const std::string& extra = "") {
        return parse_config(R"({"listeners": [)" + items + tail + extra + "}");
    };
    const auto same = listeners(R"({"name": "a", "address": "127.0.0.1:8080", "require_agent": true},
                                   {"name": "b", "address": "127.0.0.1:8080"})");
    EXPECT_NE(all_errors(same).find("listeners[1].address: takes the same connections as listeners[0]"), std::string::npos)
        << all_errors(same);
    for (const std::string items : {R"({"name": "a", "address": "0.0.0.0:8080"}, {"name": "b", "address": "127.0.0.1:8080"})",
                                    R"({"name": "a", "address": "[::1]:8080"}, {"name": "b", "address": "[::]:8080"})",
                                    R"({"name": "a", "address": "[::]:8080"}, {"name": "b", "address": "10.0.0.1:8080"})",
                                    R"({"name": "a", "address": "[::ffff:127.0.0.1]:8080"}, {"name": "b", "address": "127.0.0.1:8080"})"}) {
        EXPECT_NE(all_errors(listeners(items)).find("listeners[1].address: takes the same connections"), std::string::npos)
            << items;
    }
    const auto admin = listeners(R"({"name": "a", "address": "127.0.0.1:9901"})",
                                 R"(, "admin": {"address": "127.0.0.1:9901", "tokens": [{"name": "t", "sha256": ")" +
                                     std::string(64, 'a') + R"(", "role": "operator"}]})");
    EXPECT_NE(all_errors(admin).find("listeners[0].address: takes the same connections as admin.address"), std::string::npos)
        << all_errors(admin);
    // Other ports, other addresses, and port 0 (each its own ephemeral port) are fine.
    for (const std::string items : {R"({"name": "a", "address": "127.0.0.1:8080"}, {"name": "b", "address": "127.0.0.1:8081"})",
                                    R"({"name": "a", "address": "127.0.0.1:8080"}, {"name": "b", "address": "127.0.0.2:8080"})",
                                    R"({"name": "a", "address": "0.0.0.0:0"}, {"name": "b", "address": "127.0.0.1:0"})"}) {
        const auto ok = listeners(items);
        EXPECT_TRUE(ok.cfg) << items << ": " << all_errors(ok);
    }
}

TEST(config, upstream_url_parts) {
    auto r = parse_config(R"({"listeners": [{"name": "a", "address": "[::1]:8080"}],
        "upstreams": [{"name": "up", "url": "https://api.sendgrid.com/base/"}],
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}]})");
    ASSERT_TRUE(r.errors.empty()) << all_errors(r);
    const auto& u = r.cfg->upstreams[0];
    EXPECT_TRUE(u.tls);
    EXPECT_EQ(u.host, "api.sendgrid.com");
    EXPECT_EQ(u.port, 443);
    EXPECT_EQ(u.base_path, "/base");
    EXPECT_EQ(u.authority, "api.sendgrid.com");
    EXPECT_EQ(r.cfg->listeners[0].host, "::1");
}

// A sandbox upstream that sends where a route sends reaches the real API under a
// "sandboxed" label: refused, by name or by another name for the same place.
TEST(config, a_sandbox_upstream_must_not_be_where_a_route_sends) {
    auto r = parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "up", "url": "https://api.sendgrid.com"},
                      {"name": "alias", "url": "https://API.SendGrid.com./v3"},
                      {"name": "dry", "url": "http://127.0.0.1:9100", "sandbox_api": "any"},
                      {"name": "other-port", "url": "https://api.sendgrid.com:8443"},
                      {"name": "eu", "url": "https://api.eu.sendgrid.com"},
                      {"name": "capture", "url": "http://mailpit.internal:8025"}],
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}],
        "breakers": [{"id": "a", "action": "sandbox", "sandbox": {"upstream": "up"}},
                     {"id": "b", "action": "sandbox", "sandbox": {"upstream": "alias"}},
                     {"id": "c", "action": "sandbox", "sandbox": {"upstream": "dry"}},
                     {"id": "d", "action": "sandbox", "sandbox": {"upstream": "other-port"}},
                     {"id": "e", "action": "sandbox", "sandbox": {"upstream": "eu"}},
                     {"id": "f", "action": "sandbox", "sandbox": {"upstream": "capture"}}]})");
    const auto e = all_errors(r);
    EXPECT_NE(e.find("breakers[0].sandbox.upstream: \"up\" is the upstream of route \"r\": a sandboxed request "
                     "would reach the real API"),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("breakers[1].sandbox.upstream: \"alias\" sends to the same place as the upstream of route \"r\""),
              std::string::npos)
        << e;
    EXPECT_EQ(e.find("breakers[2]"), std::string::npos) << e;
    // A real API by another name or port (SendGrid's EU host): the request goes there as sent.
    EXPECT_NE(e.find("breakers[3].sandbox.upstream: \"other-port\" sends to api.sendgrid.com, a real API (sendgrid.com)"),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("breakers[4].sandbox.upstream: \"eu\" sends to api.eu.sendgrid.com, a real API (sendgrid.com)"),
              std::string::npos)
        << e;
    EXPECT_EQ(e.find("breakers[5]"), std::string::npos) << e;
    // Also in a version stored before the check: keeping it would leave real sends labelled
    // sandboxed (a start falls back to the file). A header named twice in a rule's match is
    // read back as it was, with a warning (a start must not drop an operator's change).
    const std::string eu = R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "up", "url": "http://127.0.0.1:9"}, {"name": "eu", "url": "https://api.eu.sendgrid.com"}],
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}],
        "breakers": [{"id": "e", "action": "sandbox", "sandbox": {"upstream": "eu"}}]})";
    EXPECT_FALSE(parse_config(eu, true).errors.empty());
    auto stored = parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "up", "url": "http://127.0.0.1:9"}],
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}],
        "failure_modes": [{"id": "fm", "title": "x", "severity": "sev2"}],
        "breakers": [{"id": "b", "action": "pause"}],
        "rules": [{"id": "q", "route": "r", "match": {"headers": {"x-t": "a", "X-T": "b"}}, "window": "1m", "limit": 1,
                   "failure_mode": "fm", "trips": "b"}]})",
                               true);
    EXPECT_TRUE(stored.errors.empty()) << stored.errors.to_string();
    EXPECT_EQ(stored.errors.relaxed().size(), 1u);
    auto bad = parse_config(base(R"(, "breakers": [])").replace(base().find("9000\""), 5,
                                                                 "9000\", \"sandbox_api\": \"maybe\""));
    EXPECT_NE(all_errors(bad).find("upstreams[0].sandbox_api: \"maybe\" is not one of \"sendgrid\", \"mailgun\", "
                                   "\"any\", \"none\""),
              std::string::npos)
        << all_errors(bad);
}

TEST(config, breakers_are_validated) {
    auto r = parse_config(base(R"(, "breakers": [
        {"id": "q", "action": "quarantine", "cooldown": "1x"},
        {"id": "t", "action": "throttle"},
        {"id": "s", "action": "sandbox", "sandbox": {"upstream": "missing"}},
        {"id": "bad/id", "action": "pause"},
        {"id": "x", "action": "explode", "reset": "sometimes", "scope": "galaxy"},
        {"id": "agent", "action": "pause"}, {"id": "upstream", "action": "pause"},
        {"id": "big", "action": "throttle", "throttle": {"requests": 1000000, "per": "1s"}}])"));
    const auto e = all_errors(r);
    EXPECT_NE(e.find("breakers[0].cooldown: \"1x\" is not a duration"), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[1].throttle: is required for action \"throttle\""), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[2].sandbox.upstream: \"missing\" is not a configured upstream"), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[3].id: \"bad/id\" is not a valid id"), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[4].action: \"explode\" is not an action"), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[4].reset: \"sometimes\" is not a reset policy"), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[4].scope: \"galaxy\" is not a scope"), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[7].throttle.requests: 1000000 is out of range (1 to 100000)"), std::string::npos) << e;
    // A keyed instance of a breaker named agent would be agent/<key>: the per-agent kill
    // switch's name, which admission checks instead.
    EXPECT_NE(e.find("breakers[5].id: \"agent\" is reserved"), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[6].id: \"upstream\" is reserved"), std::string::npos) << e;
}

// Settings that would silently do nothing, or the opposite of what they say, are refused
// with their path: a duration long enough to overflow the clock (a cooldown of "forever"
// that half-opens at once), a max_cooldown below the cooldown, a throttle or sandbox under
// another action, an empty allow list (which would allow all), a rule match that can never
// match, a null section, and an admin credential given twice.
TEST(config, settings_that_would_do_nothing_or_the_opposite_are_refused) {
    const std::string key = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    auto r = parse_config(base(R"(, "breakers": [
        {"id": "a", "action": "pause", "cooldown": "999999d"},
        {"id": "b", "action": "pause", "cooldown": "213503982335d"},
        {"id": "c", "action": "pause", "cooldown": "1h", "max_cooldown": "1m",
         "throttle": {"requests": 1, "per": "1s"}, "sandbox": {"upstream": "up"}},
        {"id": "d", "action": "explode", "throttle": {"requests": 1, "per": "1s"}}],
        "agents": [{"id": "w", "key_sha256": [")" + key + R"("],
                    "allow": {"routes": [], "methods": [], "paths": []}},
                   {"id": "v", "key_sha256": ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
                    "allow": {"methods": ["PO ST"]}}],
        "failure_modes": null,
        "admin": {"tokens": [{"name": "t1", "sha256": ")" + key + R"(", "role": "viewer"},
                             {"name": "t2", "sha256": ")" + key + R"(", "role": "admin"}]})"));
    const auto e = all_errors(r);
    EXPECT_NE(e.find("breakers[0].cooldown: \"999999d\" is too long (at most 3650d)"), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[1].cooldown: \"213503982335d\" is too long"), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[2].max_cooldown: \"1m\" is shorter than cooldown \"1h\""), std::string::npos) << e;
    EXPECT_NE(e.find("breakers[2].throttle: applies only to action \"throttle\" (this breaker's action is \"pause\")"),
              std::string::npos) << e;
    EXPECT_NE(e.find("breakers[2].sandbox: applies only to action \"sandbox\""), std::string::npos) << e;
    EXPECT_EQ(e.find("breakers[3].throttle"), std::string::npos) << "an unknown action is one error, not two: " << e;
    EXPECT_NE(e.find("agents[0].allow.routes: needs at least one route (leave it out to allow any"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].allow.methods: needs at least one method"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].allow.paths: needs at least one path"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[1].allow.methods[0]: \"PO ST\" is not an HTTP method"), std::string::npos) << e;
    EXPECT_NE(e.find("failure_modes: must be an array, not null (leave it out for none)"), std::string::npos) << e;
    EXPECT_NE(e.find("admin.tokens[1].sha256: this token already belongs to another entry"), std::string::npos) << e;

    // A rule's match is checked as a route's is.
    auto m = parse_config(base(R"(, "breakers": [{"id": "b", "action": "pause"}],
        "failure_modes": [{"id": "fm", "title": "t", "severity": "sev2"}],
        "rules": [{"id": "x", "route": "r", "measure": {"sum": "requests"}, "window": "1m", "limit": 5,
                   "failure_mode": "fm", "trips": "b",
                   "match": {"path_prefix": "v3/mail/send", "host": "api.sendgrid.com:443", "methods": ["P@ST"]}},
                  {"id": "y", "route": "r", "measure": {"sum": "requests"}, "window": "1m", "limit": 5,
                   "failure_mode": "fm", "trips": "b",
                   "match": {"path": "/crm/v3/objects/{object}/batch/{op}", "path_prefix": "/crm/v3/objects/contacts",
                             "host": "API.SendGrid.com."}}])"));
    const auto me = all_errors(m);
    EXPECT_NE(me.find("rules[0].match.path_prefix: \"v3/mail/send\" must start with /"), std::string::npos) << me;
    EXPECT_NE(me.find("rules[0].match.host: \"api.sendgrid.com:443\" names a port"), std::string::npos) << me;
    EXPECT_NE(me.find("rules[0].match.methods[0]: \"P@ST\" is not an HTTP method"), std::string::npos) << me;
    EXPECT_EQ(me.find("rules[1]"), std::string::npos) << "a template narrowed by a prefix, a host spelled otherwise: " << me;
    EXPECT_NE(all_errors(parse_config(base(R"(, "rules": null)"))).find("rules: must be an array, not null"),
              std::string::npos);

    // Client certificates: an entry shadowed by an earlier one without a pin for the same
    // subject (the pinned admin certificate would act as a viewer). A pinned entry first,
    // and two pins for one person (a rotation), are fine.
    auto c = parse_config(base(R"(, "admin": {"tls": {"cert_file": "/nonexistent.pem", "key_file": "/nonexistent.key",
        "client_ca_file": "/nonexistent.ca"},
        "tokens": [{"name": "alice", "sha256": ")" + key + R"(", "role": "viewer"}],
        "client_certs": [{"name": "bob-1", "subject_cn": "bob", "cert_sha256": ")" + key + R"(", "role": "admin"},
                         {"name": "bob-1", "subject_cn": "bob", "cert_sha256": ")" + std::string(64, 'b') + R"(", "role": "admin"},
                         {"name": "bob", "subject_cn": "bob", "role": "viewer"},
                         {"name": "carol", "subject_cn": "carol", "role": "viewer"},
                         {"name": "carol-admin", "subject_cn": "carol", "cert_sha256": ")" + key + R"(", "role": "admin"}]})"));
    const auto ce = all_errors(c);
    EXPECT_NE(ce.find("admin.client_certs[4].subject_cn: \"carol\" is already taken, with any certificate, by an earlier "
                      "entry without cert_sha256"),
              std::string::npos) << ce;
    EXPECT_EQ(ce.find("client_certs[1]"), std::string::npos) << ce;
    EXPECT_EQ(ce.find("client_certs[2]"), std::string::npos) << ce;
    EXPECT_EQ(ce.find("client_certs[0]"), std::string::npos) << ce;
    // Names are the audit's actors: one name is one role (a token and a certificate of one
    // person may share it, with the same role).
    auto n = parse_config(base(R"(, "admin": {"tls": {"cert_file": "/nonexistent.pem", "key_file": "/nonexistent.key",
        "client_ca_file": "/nonexistent.ca"},
        "tokens": [{"name": "alice", "sha256": ")" + key + R"(", "role": "viewer"},
                   {"name": "dave", "sha256": ")" + std::string(64, 'd') + R"(", "role": "operator"}],
        "client_certs": [{"name": "alice", "subject_cn": "bob", "role": "admin"},
                         {"name": "carol", "subject_cn": "carol", "cert_sha256": ")" + key + R"(", "role": "viewer"},
                         {"name": "carol", "subject_cn": "carol", "role": "admin"},
                         {"name": "dave", "subject_cn": "dave", "role": "operator"}]})"));
    const auto ne = all_errors(n);
    EXPECT_NE(ne.find("admin.client_certs[0].name: \"alice\" is used by an earlier token or certificate with another role"),
              std::string::npos) << ne;
    EXPECT_NE(ne.find("admin.client_certs[2].name: \"carol\" is used by an earlier token or certificate with another role"),
              std::string::npos) << ne;
    EXPECT_EQ(ne.find("client_certs[1]"), std::string::npos) << ne;
    EXPECT_EQ(ne.find("client_certs[3]"), std::string::npos) << "same person, same role: " << ne;
    // A version stored before these checks is read back with warnings, as it ran then: a
    // start does not drop an operator's change for the file.
    const std::string stored_text = base(R"(, "breakers": [{"id": "c", "action": "pause", "cooldown": "1h", "max_cooldown": "1m",
        "throttle": {"requests": 1, "per": "1s"}}, {"id": "d", "action": "pause", "cooldown": "4000d"}], "rules": null)");
    EXPECT_FALSE(parse_config(stored_text).errors.empty());
    const auto stored = parse_config(stored_text, true);
    ASSERT_TRUE(stored.errors.empty()) << all_errors(stored);
    EXPECT_EQ(stored.cfg->find_breaker("c")->max_cooldown, std::chrono::hours{1});
    std::string warned;
    for (const auto& w : stored.warnings) {
        warned += w + "\n";
    }
    EXPECT_NE(warned.find("breakers[0].throttle: applies only to action \"throttle\""), std::string::npos) << warned;
    EXPECT_NE(warned.find("rules: must be an array, not null"), std::string::npos) << warned;
    EXPECT_NE(warned.find("breakers[1].cooldown: \"4000d\" is too long"), std::string::npos) << warned;
    EXPECT_EQ(stored.cfg->find_breaker("d")->cooldown, bb::cfg::max_duration) << "kept, at the bound";
    EXPECT_NE(warned.find("(kept: this config was written before the check"), std::string::npos) << warned;
    // The longest duration still reads, and every unit stays exact.
    EXPECT_EQ(bb::cfg::parse_duration("3650d"), bb::cfg::max_duration);
    EXPECT_EQ(bb::cfg::parse_duration("999999999999d"), std::chrono::milliseconds::max());
}

TEST(config, a_rule_must_trip_a_declared_breaker) {
    auto r = parse_config(base(R"(, "failure_modes": [{"id": "fm", "title": "t", "severity": "sev2"}],
        "rules": [{"id": "cap", "route": "r", "measure": {"sum": "requests"}, "window": "1m", "limit": 5,
                   "failure_mode": "fm", "trips": "ghost"}])"));
    EXPECT_NE(all_errors(r).find("rules[0].trips: \"ghost\" is not a declared breaker"), std::string::npos)
        << all_errors(r);
}

// An agent's kill switch is the operators' alone: a rule that counts every caller's sends
// must not switch one agent off (nor hold everyone's sends while it is off).
TEST(config, a_rule_may_not_trip_an_implicit_breaker) {
    const std::string key(64, 'a');
    auto r = parse_config(base(R"(, "agents": [{"id": "bot", "key_sha256": [")" + key + R"("]}],
        "failure_modes": [{"id": "fm", "title": "t", "severity": "sev2"}],
        "rules": [{"id": "cap", "route": "r", "measure": {"sum": "requests"}, "window": "1m", "limit": 5,
                   "failure_mode": "fm", "trips": "agent/bot"}])"));
    EXPECT_NE(all_errors(r).find("rules[0].trips: \"agent/bot\" is an implicit breaker"), std::string::npos)
        << all_errors(r);
    // A version stored before the check still loads, with a warning.
    auto stored = parse_config(base(R"(, "agents": [{"id": "bot", "key_sha256": [")" + key + R"("]}],
        "failure_modes": [{"id": "fm", "title": "t", "severity": "sev2"}],
        "rules": [{"id": "cap", "route": "r", "measure": {"sum": "requests"}, "window": "1m", "limit": 5,
                   "failure_mode": "fm", "trips": "agent/bot"}])"), true);
    EXPECT_TRUE(stored.errors.empty()) << all_errors(stored);
    std::string warned;
    for (const auto& w : stored.warnings) {
        warned += w + "\n";
    }
    EXPECT_NE(warned.find("rules[0].trips: \"agent/bot\" is an implicit breaker"), std::string::npos) << warned;
}

TEST(config, upstream_health_makes_an_implicit_breaker) {
    auto r = parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "up", "url": "http://127.0.0.1:9", "health": {"consecutive_failures": 5, "cooldown": "10s"}}],
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}]})");
    ASSERT_TRUE(r.errors.empty()) << all_errors(r);
    const auto* b = r.cfg->find_breaker("upstream/up");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->cooldown, std::chrono::seconds{10});
    auto bad = parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "up", "url": "http://127.0.0.1:9", "health": {"consecutive_failures": 0}}],
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}]})");
    EXPECT_NE(all_errors(bad).find("upstreams[0].health: enables no check"), std::string::npos) << all_errors(bad);
    // slow_ratio 0 would be crossed by any volume: a healthy upstream tripped over and over.
    auto zero = parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "up", "url": "http://127.0.0.1:9", "health": {"slow_call": "2s", "slow_ratio": 0}}],
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}]})");
    EXPECT_NE(all_errors(zero).find("upstreams[0].health.slow_ratio: must be above 0"), std::string::npos)
        << all_errors(zero);
}

// Settings that pass every check of their own and still do nothing: a check of a health
// setting that nothing reads, a route an earlier one takes every request of, a rule's
// prefix no path of its template starts with, an empty allow list or constraint object.
TEST(config, settings_that_nothing_reads_are_refused) {
    auto health = [](const std::string& h) {
        return all_errors(parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
            "upstreams": [{"name": "up", "url": "http://127.0.0.1:9", "health": )" + h + R"(}],
            "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}]})"));
    };
    EXPECT_NE(health(R"({"consecutive_failures": 3, "slow_ratio": 0.2})").find("upstreams[0].health.slow_ratio: needs slow_call"),
              std::string::npos);
    EXPECT_NE(health(R"({"consecutive_failures": 3, "window": "10s", "min_volume": 5})")
                  .find("upstreams[0].health.window: is used by failure_ratio and slow_call, and neither is set"),
              std::string::npos);
    EXPECT_NE(health(R"({"consecutive_failures": 3, "min_volume": 5})").find("upstreams[0].health.min_volume"),
              std::string::npos);
    EXPECT_EQ(health(R"({"failure_ratio": 0.5, "window": "10s", "min_volume": 5})"), "");
    EXPECT_EQ(health(R"({"slow_call": "2s", "slow_ratio": 0.5, "window": "10s"})"), "");

    auto routes = [](const std::string& items, const std::string& extra = "") {
        return all_errors(parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"})" + extra + R"(],
            "upstreams": [{"name": "up", "url": "http://127.0.0.1:9"}, {"name": "other", "url": "http://127.0.0.1:8"}],
            "routes": [)" + items + "]}"));
    };
    const std::string all = R"({"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"})";
    const std::string send = R"({"name": "mail-send", "match": {"path": "/v3/mail/send", "methods": ["POST"]}, "upstream": "up"})";
    const auto hidden = routes(all + "," + send);
    EXPECT_NE(hidden.find("routes[1].match: route \"mail-send\" can never be chosen: routes[0] (\"all\"), listed "
                          "before it, takes every request it would"),
              std::string::npos) << hidden;
    EXPECT_EQ(routes(send + "," + all), "") << "the narrower route first";
    // Conditions the earlier route does not meet for every request of the later one.
    EXPECT_EQ(routes(R"({"name": "posts", "match": {"path_prefix": "/v3", "methods": ["POST"]}, "upstream": "up"},
                        {"name": "v3", "match": {"path_prefix": "/v3/mail", "methods": ["POST", "GET"]}, "upstream": "up"})"), "");
    EXPECT_EQ(routes(R"({"name": "x", "match": {"host": "x.example", "path_prefix": "/"}, "upstream": "up"},
                        {"name": "y", "match": {"host": "y.example", "path_prefix": "/"}, "upstream": "up"})"), "");
    EXPECT_EQ(routes(R"({"name": "exact", "match": {"path": "/v3"}, "upstream": "up"},
                        {"name": "under", "match": {"path_prefix": "/v3"}, "upstream": "up"})"), "");
    EXPECT_NE(routes(R"({"name": "v3", "match": {"path_prefix": "/V3/"}, "upstream": "up"},
                        {"name": "mail", "match": {"path_prefix": "/v3/mail", "methods": ["GET"]}, "upstream": "other"})")
                  .find("routes[1].match: route \"mail\" can never be chosen"),
              std::string::npos) << "paths compare without case";
    EXPECT_NE(routes(R"({"name": "h", "match": {"host": "api.example", "path_prefix": "/"}, "upstream": "up"},
                        {"name": "h2", "match": {"host": "API.example", "path": "/v3"}, "upstream": "up"})")
                  .find("routes[1].match"),
              std::string::npos);
    // A forward proxy's requests pass routes for any host by, and a host's route only takes
    // its own upstream's destination: there a route for any host hides nothing with a host.
    const std::string fwd = R"(, {"name": "f", "address": "127.0.0.1:0", "forward_proxy": {}})";
    const auto with_fwd = routes(all + R"(, {"name": "h", "match": {"host": "api.example", "path_prefix": "/"}, "upstream": "up"})", fwd);
    EXPECT_EQ(with_fwd.find("routes["), std::string::npos) << with_fwd;
    EXPECT_NE(routes(all + R"(, {"name": "h", "match": {"host": "api.example", "path_prefix": "/"}, "upstream": "up"})")
                  .find("routes[1].match"),
              std::string::npos) << "no forward proxy: the route for any host takes them all";

    auto rule_match = [](const std::string& match) {
        return all_errors(parse_config(base(R"(, "breakers": [{"id": "b", "action": "pause"}],
            "failure_modes": [{"id": "fm", "title": "t", "severity": "sev2"}],
            "rules": [{"id": "x", "route": "r", "measure": {"sum": "requests"}, "window": "1m", "limit": 5,
                       "failure_mode": "fm", "trips": "b", "match": )" + match + "}]")));
    };
    EXPECT_NE(rule_match(R"({"path": "/v3/mail/send", "path_prefix": "/v3/marketing"})")
                  .find("rules[0].match.path_prefix: \"/v3/marketing\" starts no path that \"/v3/mail/send\" matches"),
              std::string::npos);
    EXPECT_NE(rule_match(R"({"path": "/crm/v3/objects/{object}/batch", "path_prefix": "/crm/v3/objects/contacts/batch/x"})")
                  .find("rules[0].match.path_prefix"),
              std::string::npos) << "longer than any path of the template";
    EXPECT_NE(rule_match(R"({"path": "/crm/v3/objects/{object:contacts|deals}/batch", "path_prefix": "/crm/v3/objects/tick"})")
                  .find("rules[0].match.path_prefix"),
              std::string::npos) << "no allowed value starts so";
    for (const char* fine : {R"({"path": "/v3/mail/send", "path_prefix": "/v3/MAIL/se"})",
                             R"({"path": "/v3/mail/send", "path_prefix": "/v3/mail/send/"})",
                             R"({"path": "/services/data/{v}/composite", "path_prefix": "/services/data/v5"})",
                             R"({"path": "/services/data/{v}/composite", "path_prefix": "/services/data/v5/composite.json"})",
                             R"({"path": "/crm/v3/objects/{object:contacts|deals}/batch", "path_prefix": "/crm/v3/objects/con"})"}) {
        EXPECT_EQ(rule_match(fine), "") << fine;
    }

    const std::string key(64, 'a');
    const auto empty = all_errors(parse_config(base(R"(, "agents": [{"id": "bot", "key_sha256": [")" + key +
                                                    R"("], "allow": {}, "constraints": {}}])")));
    EXPECT_NE(empty.find("agents[0].allow: allows no less than leaving it out"), std::string::npos) << empty;
    EXPECT_NE(empty.find("agents[0].constraints: constrains nothing"), std::string::npos) << empty;
}

// An item of a list that is not a string is one error: the other items are still checked
// (every other error of that list used to be hidden by it).
TEST(config, a_list_item_of_another_type_hides_no_other_error) {
    const std::string key(64, 'a');
    const auto e = all_errors(parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "up", "url": "http://127.0.0.1:9"}],
        "routes": [{"name": "r", "match": {"path_prefix": "/", "methods": ["GET", 5, "BAD METHOD"]}, "upstream": "up"}],
        "agents": [{"id": "bot", "key_sha256": [")" + key + R"(", 7, "zz"], "allow": {"routes": ["nope", null]}}]})"));
    for (const char* expected : {"routes[0].match.methods[1]: must be a string, not a number",
                                 "routes[0].match.methods[2]: \"BAD METHOD\" is not an HTTP method",
                                 "agents[0].key_sha256[1]: must be a string", "agents[0].key_sha256[2]",
                                 "agents[0].allow.routes[0]: \"nope\" is not a configured route",
                                 "agents[0].allow.routes[1]: must be a string, not null"}) {
        EXPECT_NE(e.find(expected), std::string::npos) << expected << "\nin:\n" << e;
    }
    // The item of another type is said to be so, and nothing more of it.
    EXPECT_EQ(e.find("key_sha256[1]: must be 64 hex digits"), std::string::npos) << e;
    EXPECT_EQ(e.find("\"null\" is not a configured route"), std::string::npos) << e;
}

TEST(config, unimplemented_sections_are_refused_not_ignored) {
    auto r = parse_config(base(R"(, "cluster": {"redis": "127.0.0.1:6379"})"));
    const auto e = all_errors(r);
    EXPECT_NE(e.find("cluster: is not supported by this build"), std::string::npos) << e;
}

TEST(config, wrong_types_name_the_expected_type) {
    auto r = parse_config(R"({"listeners": {"name": "a"}, "upstreams": [{"name": 3, "url": "http://x", "timeout": 30}],
                              "routes": []})");
    const auto e = all_errors(r);
    EXPECT_NE(e.find("listeners: must be an array, not an object"), std::string::npos) << e;
    EXPECT_NE(e.find("upstreams[0].name: must be a string, not a number"), std::string::npos) << e;
    EXPECT_NE(e.find("upstreams[0].timeout: must be a duration string such as \"30s\", not a number"), std::string::npos) << e;
}

TEST(config, admin_tokens_are_hashes_with_roles_and_the_listener_stays_on_loopback) {
    auto r = parse_config(base(R"(, "admin": {"address": "0.0.0.0:9901", "tokens": [
        {"name": "a", "sha256": "abc", "role": "root"},
        {"name": "a", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "role": "viewer"}]})"));
    const auto e = all_errors(r);
    EXPECT_NE(e.find("admin.address: \"0.0.0.0:9901\" is not a loopback address"), std::string::npos) << e;
    EXPECT_NE(e.find("admin.tokens[0].sha256: must be 64 hex digits"), std::string::npos) << e;
    EXPECT_NE(e.find("admin.tokens[0].role: \"root\" is not a role"), std::string::npos) << e;
    EXPECT_NE(e.find("admin.tokens[1].name: \"a\" is empty or used by another token"), std::string::npos) << e;
    auto ok = parse_config(base(R"(, "admin": {"tokens": [
        {"name": "ops", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "role": "operator"}]})"));
    ASSERT_TRUE(ok.errors.empty()) << all_errors(ok);
    EXPECT_TRUE(ok.cfg->admin.enabled);
    EXPECT_EQ(ok.cfg->admin.port, 9901);
    EXPECT_EQ(ok.cfg->admin.tokens[0].sha256[0], 0x9f);
}

TEST(config, a_non_loopback_admin_listener_needs_tls) {
    auto r = parse_config(base(R"(, "admin": {"address": "0.0.0.0:9901", "tls": {"cert_file": "/nonexistent.pem",
        "key_file": "/nonexistent.key", "require_client_cert": true},
        "tokens": [{"name": "ops", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "role": "operator"}]})"));
    const auto e = all_errors(r);
    EXPECT_EQ(e.find("is not a loopback address"), std::string::npos) << e;
    EXPECT_NE(e.find("admin.tls.cert_file: \"/nonexistent.pem\" cannot be read"), std::string::npos) << e;
    EXPECT_NE(e.find("admin.tls.require_client_cert: needs client_ca_file"), std::string::npos) << e;
}

TEST(config, agents_have_hashed_keys_known_routes_and_a_kill_switch) {
    auto bad = parse_config(base(R"(, "agents": [
        {"id": "writer", "key_sha256": ["xyz"], "allow": {"routes": ["nope"], "paths": ["v3/*", "/a/*/b"]}},
        {"id": "writer", "key_sha256": []}])"));
    const auto e = all_errors(bad);
    EXPECT_NE(e.find("agents[0].key_sha256[0]: must be 64 hex digits"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].allow.routes[0]: \"nope\" is not a configured route"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].allow.paths[0]"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].allow.paths[1]"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[1].id: \"writer\" is used by another agent"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[1].key_sha256: must not be empty when the agent has no cert_names"), std::string::npos)
        << e;
    auto ok = parse_config(base(R"(, "agents": [{"id": "writer", "key_sha256":
        ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"], "allow": {"routes": ["r"], "methods": ["post"]}}])"));
    ASSERT_TRUE(ok.errors.empty()) << all_errors(ok);
    EXPECT_EQ(ok.cfg->agents[0].allow.methods[0], "POST");
    ASSERT_NE(ok.cfg->find_breaker("agent/writer"), nullptr);
    EXPECT_EQ(ok.cfg->find_breaker("agent/writer")->reset, bb::breakers::reset_policy::manual);
    // A listener that also serves callers without a key lets them skip every agent control.
    ASSERT_EQ(ok.warnings.size(), 1u);
    EXPECT_NE(ok.warnings[0].find("listeners[0].require_agent"), std::string::npos) << ok.warnings[0];
    std::string required = base(R"(, "agents": [{"id": "writer", "key_sha256":
        ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]}])");
    required.replace(required.find("\"127.0.0.1:0\""), 13, "\"127.0.0.1:0\", \"require_agent\": true");
    auto strict = parse_config(required);
    ASSERT_TRUE(strict.errors.empty()) << all_errors(strict);
    EXPECT_TRUE(strict.warnings.empty());
    EXPECT_TRUE(parse_config(base()).warnings.empty()) << "no agents: nothing to skip";
    // A route's match.host is kept in one spelling, and a port or a URL in it is an error.
    auto spelled = [](const std::string& host) {
        std::string c = base();
        c.replace(c.find("\"match\": {"), 10, "\"match\": {\"host\": \"" + host + "\", ");
        return parse_config(c);
    };
    for (const auto& [given, kept] : std::vector<std::pair<std::string, std::string>>{
             {"API.SendGrid.com.", "api.sendgrid.com"}, {"[::1]", "::1"}, {"", ""}}) {
        auto r = spelled(given);
        ASSERT_TRUE(r.errors.empty()) << given << ": " << all_errors(r);
        EXPECT_EQ(r.cfg->routes[0].match.host, kept) << given;
    }
    EXPECT_NE(all_errors(spelled("api.sendgrid.com:443")).find("routes[0].match.host: \"api.sendgrid.com:443\" names a port"),
              std::string::npos);
    EXPECT_NE(all_errors(spelled("https://api.sendgrid.com/")).find("is not a host name"), std::string::npos);
    EXPECT_NE(all_errors(spelled("[::1]:8443")).find("names a port"), std::string::npos);
    // An upstream whose certificate is not verified is said at load.
    std::string unverified = base();
    unverified.replace(unverified.find("\"http://127.0.0.1:9000\""), 23, "\"https://api.sendgrid.com\", \"verify\": false");
    auto mitm = parse_config(unverified);
    ASSERT_TRUE(mitm.errors.empty()) << all_errors(mitm);
    ASSERT_EQ(mitm.warnings.size(), 1u);
    EXPECT_NE(mitm.warnings[0].find("upstreams[0].verify: false"), std::string::npos) << mitm.warnings[0];
}

TEST(config, agent_body_constraints_are_parsed_and_normalized) {
    auto ok = parse_config(base(R"(, "agents": [
        {"id": "mailer", "key_sha256": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
         "constraints": {"max_recipients": 50, "from_domains": ["Example.com", "mail.example.com", "XN--bcher-kva.de"],
                         "reply_to_domains": ["Help.Example.net"], "template_ids": ["d-123", "welcome-v2"]}},
        {"id": "partial", "key_sha256": ["0f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
         "constraints": {"template_ids": ["t"]}},
        {"id": "free", "key_sha256": ["1f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]}])"));
    ASSERT_TRUE(ok.errors.empty()) << all_errors(ok);
    const auto& c = ok.cfg->agents[0].constraints;
    EXPECT_EQ(c.max_recipients, std::optional<std::uint64_t>{50});
    // An ACE label is kept as its Unicode label, the form addresses are compared in.
    EXPECT_EQ(c.from_domains, (std::vector<std::string>{"example.com", "mail.example.com", "bücher.de"}));
    EXPECT_EQ(c.reply_to_domains, std::vector<std::string>{"help.example.net"});
    EXPECT_EQ(c.template_ids, (std::vector<std::string>{"d-123", "welcome-v2"}));
    const auto& p = ok.cfg->agents[1].constraints;
    EXPECT_FALSE(p.max_recipients);
    EXPECT_TRUE(p.from_domains.empty());
    EXPECT_TRUE(p.reply_to_domains.empty());
    EXPECT_EQ(p.template_ids, std::vector<std::string>{"t"});
    EXPECT_TRUE(ok.cfg->agents[2].constraints.empty());
}

TEST(config, agent_body_constraint_errors_name_their_path) {
    auto bad = parse_config(base(R"(, "agents": [
        {"id": "a", "key_sha256": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
         "constraints": {"max_recipients": 0, "from_domains": ["ok.example", "*.example.com", "bad domain", "-x.com", "a..b", "x.com."],
                         "template_ids": ["fine", ""], "max_recipents": 5}},
        {"id": "b", "key_sha256": ["0f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
         "constraints": {"max_recipients": "10", "from_domains": [], "template_ids": [7],
                         "reply_to_domains": ["ok.example", "*.help.example"]}},
        {"id": "c", "key_sha256": ["1f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
         "constraints": {"max_recipients": 1.5, "from_domains": "example.com", "template_ids": []}},
        {"id": "d", "key_sha256": ["2f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
         "constraints": ["max_recipients"]}])"));
    const auto e = all_errors(bad);
    EXPECT_NE(e.find("agents[0].constraints.max_recipients: 0 is out of range (at least 1)"), std::string::npos) << e;
    EXPECT_EQ(e.find("agents[0].constraints.from_domains[0]"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].constraints.from_domains[1]: \"*.example.com\" is not a domain name (no wildcards"),
              std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].constraints.from_domains[2]: \"bad domain\" is not a domain name"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].constraints.from_domains[3]: \"-x.com\" is not a domain name"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].constraints.from_domains[4]: \"a..b\" is not a domain name"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].constraints.from_domains[5]: \"x.com.\" is not a domain name"), std::string::npos) << e;
    EXPECT_EQ(e.find("agents[0].constraints.template_ids[0]"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].constraints.template_ids[1]: must not be empty"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[0].constraints.max_recipents"), std::string::npos) << e;  // the typo is reported
    EXPECT_NE(e.find("agents[1].constraints.max_recipients: must be a whole number"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[1].constraints.from_domains: needs at least one domain"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[1].constraints.template_ids[0]: must be a string"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[1].constraints.reply_to_domains[1]: \"*.help.example\" is not a domain name (no wildcards"),
              std::string::npos) << e;
    EXPECT_EQ(e.find("agents[1].constraints.reply_to_domains[0]"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[2].constraints.max_recipients: must be a whole number"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[2].constraints.from_domains"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[2].constraints.template_ids: needs at least one template id"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[3].constraints"), std::string::npos) << e;
}

TEST(config, listener_tls_forward_proxy_and_cert_name_errors_name_their_path) {
    auto bad = parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0",
                                 "tls": {"cert_file": "/nonexistent/cert.pem", "require_client_cert": true,
                                         "client_crl_file": "/nonexistent/crl.pem", "client_crl_leaf_only": true},
                                 "forward_proxy": {"ca_cert_file": "/nonexistent/ca.pem", "passthrough": ["ok.example:443", "bad host/x"],
                                                   "leaf_cache": 0, "leaf_lifetime": "1m", "extra": 1}}],
               "upstreams": [{"name": "up", "url": "http://127.0.0.1:9000"}],
               "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"},
                          {"name": "r2", "match": {"host": "my_api.internal"}, "upstream": "up"},
                          {"name": "r3", "match": {"host": "10.0.0.7"}, "upstream": "up"}],
               "agents": [{"id": "a", "cert_names": ["bot.agents.local", ""]},
                          {"id": "b", "cert_names": ["bot.agents.local"]},
                          {"id": "c"}]})");
    const auto e = all_errors(bad);
    EXPECT_NE(e.find("listeners[0].tls.cert_file: \"/nonexistent/cert.pem\" cannot be read"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].tls.key_file"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].tls.require_client_cert: needs client_ca_file"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].tls.client_crl_file: \"/nonexistent/crl.pem\" cannot be read"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].tls.client_crl_file: needs client_ca_file"), std::string::npos) << e;
    EXPECT_EQ(e.find("client_crl_leaf_only"), std::string::npos) << "it has its file: " << e;
    EXPECT_NE(e.find("listeners[0].forward_proxy.ca_cert_file: \"/nonexistent/ca.pem\" cannot be read"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].forward_proxy.ca_key_file"), std::string::npos) << e;
    EXPECT_EQ(e.find("passthrough[0]"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].forward_proxy.passthrough[1]: \"bad host/x\" is not a host, host:port or [IPv6]:port"),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("listeners[0].forward_proxy.leaf_cache"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].forward_proxy.leaf_lifetime: \"1m\" is too short (at least 1h)"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].forward_proxy.extra"), std::string::npos) << e;
    EXPECT_EQ(e.find("routes[1]"), std::string::npos) << "a warning only: " << e;
    std::string warned;
    for (const auto& w : bad.warnings) {
        warned += w + "\n";
    }
    EXPECT_NE(warned.find("routes[1].match.host: \"my_api.internal\" cannot be intercepted by a forward proxy"),
              std::string::npos) << warned;
    EXPECT_EQ(warned.find("routes[2]"), std::string::npos) << "an IP address can be: " << warned;
    EXPECT_NE(e.find("agents[0].cert_names[1]: must not be empty"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[1].cert_names[0]: \"bot.agents.local\" already identifies another agent"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[2].key_sha256"), std::string::npos) << "an agent needs a key or a certificate name: " << e;
    EXPECT_EQ(e.find("agents[0].key_sha256"), std::string::npos) << e;
}

TEST(config, agent_list_domains_need_max_recipients_and_are_domains) {
    const auto e = all_errors(parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0"}],
               "upstreams": [{"name": "up", "url": "http://127.0.0.1:9000"}],
               "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}],
               "agents": [{"id": "a", "key_sha256": ["0000000000000000000000000000000000000000000000000000000000000000"],
                           "constraints": {"list_domains": ["lists.example.com"]}},
                          {"id": "b", "key_sha256": ["1111111111111111111111111111111111111111111111111111111111111111"],
                           "constraints": {"max_recipients": 5, "list_domains": ["not a domain", "*.lists.example.com"]}},
                          {"id": "c", "key_sha256": ["2222222222222222222222222222222222222222222222222222222222222222"],
                           "constraints": {"max_recipients": 5, "list_domains": []}}]})"));
    EXPECT_NE(e.find("agents[0].constraints.list_domains: needs max_recipients"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[1].constraints.list_domains[0]: \"not a domain\" is not a domain name"), std::string::npos) << e;
    EXPECT_NE(e.find("agents[1].constraints.list_domains[1]: \"*.lists.example.com\" is not a domain name (no wildcards: a "
                     "domain covers its subdomains)"),
              std::string::npos)
        << e;
    EXPECT_EQ(e.find("agents[2]"), std::string::npos) << e;
}

// Apple's clients refuse a TLS server certificate valid for more than 825 days, even from a
// locally trusted CA: a longer leaf would break every Apple agent behind the forward proxy.
TEST(config, forward_proxy_leaf_lifetime_is_at_most_825_days) {
    const auto with = [](const char* lifetime) {
        return all_errors(parse_config(std::string{R"({"listeners": [{"name": "a", "address": "127.0.0.1:0",
                                 "forward_proxy": {"ca_cert_file": "/nonexistent/ca.pem", "ca_key_file": "/nonexistent/ca.key",
                                                   "leaf_lifetime": ")"} + lifetime + R"("}}],
               "upstreams": [{"name": "up", "url": "http://127.0.0.1:9000"}],
               "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}]})"));
    };
    const auto too_long = with("826d");
    EXPECT_NE(too_long.find("listeners[0].forward_proxy.leaf_lifetime: \"826d\" is too long (at most 825d)"),
              std::string::npos)
        << too_long;
    const auto longest = with("825d");
    EXPECT_EQ(longest.find("leaf_lifetime"), std::string::npos) << longest;
}

// Files named in config are read on the control thread (at start, on SIGHUP, on an admin
// apply): a FIFO would block it until a writer came, /dev/zero would grow memory until the
// process died. Both are refused as not regular files, before anything is read.
TEST(config, files_named_in_config_must_be_regular_files) {
    const std::string fifo = "/tmp/bb-config-fifo-" + std::to_string(::getpid());
    ::unlink(fifo.c_str());
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    struct remove_at_exit {
        std::string path;
        ~remove_at_exit() { ::unlink(path.c_str()); }
    } const cleanup{fifo};

    auto bad = parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0",
                                 "tls": {"cert_file": ")" + fifo + R"(", "key_file": "/dev/zero"},
                                 "forward_proxy": {"ca_cert_file": ")" + fifo + R"(", "ca_key_file": "/dev/null"}}],
               "upstreams": [{"name": "up", "url": "https://127.0.0.1:9000", "ca_file": "/dev/zero"}],
               "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}]})");
    const auto e = all_errors(bad);
    EXPECT_NE(e.find("listeners[0].tls.cert_file: \"" + fifo + "\" is not a regular file"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].tls.key_file: \"/dev/zero\" is not a regular file"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].forward_proxy.ca_cert_file: \"" + fifo + "\" is not a regular file"), std::string::npos)
        << e;
    EXPECT_NE(e.find("listeners[0].forward_proxy.ca_key_file: \"/dev/null\" is not a regular file"), std::string::npos)
        << e;
    EXPECT_NE(e.find("upstreams[0].ca_file: \"/dev/zero\" is not a regular file"), std::string::npos) << e;

    // The config file itself (SIGHUP reads it again).
    const auto from_fifo = bb::load_config_file(fifo, nullptr);
    EXPECT_NE(all_errors(from_fifo).find("config file \"" + fifo + "\" is not a regular file"), std::string::npos)
        << all_errors(from_fifo);
    // At the start a FIFO is the operator's own (`--config <(render ...)`): read, bounded.
    std::thread writer{[&] { std::ofstream{fifo} << "{\"listeners\": 7}"; }};
    const auto at_start = bb::load_config_file(fifo, nullptr, true);
    writer.join();
    EXPECT_NE(all_errors(at_start).find("listeners: must be an array"), std::string::npos) << all_errors(at_start);
    const auto missing = bb::load_config_file("/nonexistent/breakerbox.json", nullptr);
    EXPECT_NE(all_errors(missing).find("cannot read config file \"/nonexistent/breakerbox.json\""), std::string::npos)
        << all_errors(missing);
}

// A passthrough entry is (host, port); a host alone, bracketed or a bare IPv6 literal, is 443.
TEST(config, passthrough_entries_are_host_and_port_pairs) {
    using hp = std::pair<std::string, std::uint16_t>;
    EXPECT_EQ(bb::passthrough_entry("Ok.Example:8443"), (hp{"ok.example", 8443}));
    EXPECT_EQ(bb::passthrough_entry("ok.example"), (hp{"ok.example", 443}));
    EXPECT_EQ(bb::passthrough_entry("Ok.Example.:8443"), (hp{"ok.example", 8443})) << "one spelling per host";
    EXPECT_EQ(bb::passthrough_entry("[fd00::1]:25"), (hp{"fd00::1", 25}));
    EXPECT_EQ(bb::passthrough_entry("[fd00::1]"), (hp{"fd00::1", 443}));
    EXPECT_EQ(bb::passthrough_entry("fd00::1:25"), (hp{"fd00::1:25", 443})) << "a bare IPv6 literal has no port";
    for (const char* bad : {"", "a b", "x/y", "[fd00::1", "[fd00::1]x", "host:0", "host:99999", "host:", "[]"}) {
        EXPECT_FALSE(bb::passthrough_entry(bad)) << bad;
    }
}

// A passthrough entry that is an upstream's own address would be a blind, unmetered path to
// the API that the routes meter (a route without match.host does not make it a destination).
TEST(config, a_passthrough_entry_may_not_be_an_upstreams_address) {
    auto r = parse_config(R"({"listeners": [{"name": "a", "address": "127.0.0.1:0",
                                 "forward_proxy": {"ca_cert_file": "/nonexistent/ca.pem", "ca_key_file": "/nonexistent/ca.key",
                                                   "passthrough": ["API.Example.com.", "api.example.com:8443", "other.example",
                                                                   "127.0.0.1:9000"]}}],
               "upstreams": [{"name": "up", "url": "https://api.example.com"}, {"name": "local", "url": "http://127.0.0.1:9000"}],
               "routes": [{"name": "r", "match": {"path_prefix": "/v3/"}, "upstream": "up"},
                          {"name": "l", "match": {"path_prefix": "/local/"}, "upstream": "local"}]})");
    const auto e = all_errors(r);
    EXPECT_NE(e.find("listeners[0].forward_proxy.passthrough[0]: names upstream \"up\"'s host and port: a blind tunnel there would "
                     "reach it unmetered"),
              std::string::npos)
        << e;
    EXPECT_EQ(e.find("passthrough[1]"), std::string::npos) << "another port is another service: " << e;
    EXPECT_EQ(e.find("passthrough[2]"), std::string::npos) << e;
    EXPECT_NE(e.find("listeners[0].forward_proxy.passthrough[3]: names upstream \"local\"'s host and port"), std::string::npos) << e;
}

// A certificate naming two agents identifies neither, whatever their order.
TEST(config, a_certificate_naming_two_agents_is_ambiguous) {
    auto r = parse_config(base(R"(, "agents": [{"id": "a", "cert_names": ["a.agents.local"]},
                                              {"id": "b", "cert_names": ["b.agents.local"]}])"));
    ASSERT_TRUE(r.errors.empty()) << all_errors(r);
    bool ambiguous = false;
    const auto* a = r.cfg->agent_by_cert_names({"x.local", "a.agents.local"}, &ambiguous);
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->id, "a");
    EXPECT_FALSE(ambiguous);
    EXPECT_EQ(r.cfg->agent_by_cert_names({"b.agents.local", "a.agents.local"}, &ambiguous), nullptr);
    EXPECT_TRUE(ambiguous);
}

// DNS names ignore case and a final dot: a certificate's SAN `A.Agents.Local` (or
// `a.agents.local.`) names agent a; it named nobody, anonymous where identity is optional.
// Names that fold to one are one name in the config too.
TEST(config, certificate_names_compare_without_case_or_a_final_dot) {
    auto r = parse_config(base(R"(, "agents": [{"id": "a", "cert_names": ["a.agents.local"]},
                                              {"id": "b", "cert_names": ["B.Agents.Local."]}])"));
    ASSERT_TRUE(r.errors.empty()) << all_errors(r);
    for (const std::string n : {"A.Agents.Local", "a.agents.local.", "A.AGENTS.LOCAL."}) {
        const auto* a = r.cfg->agent_by_cert_names({n});
        ASSERT_NE(a, nullptr) << n;
        EXPECT_EQ(a->id, "a") << n;
    }
    const auto* b = r.cfg->agent_by_cert_names({"b.agents.local"});
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->id, "b");
    EXPECT_EQ(r.cfg->agent_by_cert_names({"a.agents.local.x"}), nullptr);
    EXPECT_EQ(r.cfg->agent_by_cert_names({"a.agents.loca"}), nullptr);

    auto dup = parse_config(base(R"(, "agents": [{"id": "a", "cert_names": ["bot.agents.local"]},
                                                {"id": "b", "cert_names": ["Bot.Agents.Local."]}])"));
    EXPECT_NE(all_errors(dup).find("agents[1].cert_names[0]: \"Bot.Agents.Local.\" already identifies another agent"),
              std::string::npos)
        << all_errors(dup);
}

// An upstream URL refused for carrying a credential is quoted without it: errors are logged
// and kept in the audit log, which viewers read. Also when the password holds '/', '?' or
// '#', or the URL does not parse at all.
TEST(config, upstream_url_errors_do_not_quote_credentials) {
    const std::string plain = "http://127.0.0.1:9000";
    for (const std::string url : {"http://svc:S3CRET@127.0.0.1:9000", "https://svc:p/S3CRET@api.example.com",
                                  "https://svc:pa?S3CRET@api.example.com", "http://h:1/x?api_key=S3CRET",
                                  "ht tp://svc:S3CRET@h"}) {
        std::string cfg = base();
        cfg.replace(cfg.find(plain), plain.size(), url);
        const auto e = all_errors(parse_config(cfg));
        EXPECT_NE(e.find("upstreams[0].url"), std::string::npos) << url << ": " << e;
        EXPECT_EQ(e.find("S3CRET"), std::string::npos) << e;
    }
}

// A per-thread parser that once read a large document does not keep its capacity for ever.
TEST(json_reader, a_grown_parser_is_released_before_a_small_document) {
    simdjson::dom::parser p;
    std::string big = "[";
    for (int i = 0; i < 300000; ++i) {
        big += i ? ",0" : "0";
    }
    big += "]";
    simdjson::dom::element e;
    ASSERT_EQ(p.parse(big).get(e), simdjson::SUCCESS);
    ASSERT_GT(p.capacity(), std::size_t{1} << 19);
    bb::cfg::release_if_grown(p, 2 * big.size());  // a larger one next: kept
    EXPECT_GE(p.capacity(), big.size());
    big.append(std::size_t{1} << 20, ' ');
    ASSERT_EQ(p.parse(big).get(e), simdjson::SUCCESS);
    bb::cfg::release_if_grown(p, 10);
    EXPECT_EQ(p.capacity(), 0u);
    ASSERT_EQ(p.parse("[1]", 3).get(e), simdjson::SUCCESS);
}
