// Agent identity and scopes through real sockets (issue 7, first part): API keys stored as
// SHA-256, 401 for unknown or missing keys on a listener that requires them, 403
// out_of_scope naming the agent, the key never forwarded, the per-agent kill switch, the
// per-agent sandbox, and the agent as a rule key.
#include "tests/support/fake_upstream.hpp"
#include "tests/support/proxy_fixture.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include <openssl/evp.h>

#include <cstdio>

using namespace bb::test;
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

std::string agents_config(std::uint16_t port, const std::string& dir) {
    return "{\"workers\": 2, \"listeners\": [{\"name\": \"agents\", \"address\": \"127.0.0.1:0\", \"require_agent\": true}],"
           "\"store\": {\"path\": \"" + dir + "/bb.db\"},"
           "\"upstreams\": [{\"name\": \"up\", \"url\": \"http://127.0.0.1:" + std::to_string(port) +
           "\", \"sandbox_api\": \"any\"}],"
           "\"routes\": [{\"name\": \"mail-send\", \"match\": {\"path_prefix\": \"/v3/mail/send\"}, \"upstream\": \"up\"},"
           "{\"name\": \"crm\", \"match\": {\"path_prefix\": \"/crm/\"}, \"upstream\": \"up\"}],"
           "\"agents\": ["
           "{\"id\": \"writer\", \"key_sha256\": [\"" + sha256_hex("writer-key") + "\"], \"allow\": {\"routes\": [\"mail-send\"], \"methods\": [\"POST\"]},"
           " \"constraints\": {\"max_recipients\": 2, \"from_domains\": [\"example.com\"]}},"
           "{\"id\": \"reader\", \"key_sha256\": [\"" + sha256_hex("reader-key") + "\"], \"allow\": {\"methods\": [\"GET\"], \"paths\": [\"/crm/v3/objects/*\"]}},"
           "{\"id\": \"trial\", \"key_sha256\": [\"" + sha256_hex("trial-key") + "\"], \"sandbox\": true}],"
           "\"failure_modes\": [{\"id\": \"fm\", \"title\": \"Volume\", \"severity\": \"sev2\"}],"
           "\"breakers\": [{\"id\": \"per-agent\", \"action\": \"pause\", \"reset\": \"manual\"}],"
           "\"rules\": [{\"id\": \"mails-per-agent\", \"route\": \"mail-send\", \"key\": [\"agent\"],"
           "\"measure\": {\"sum\": \"requests\"}, \"window\": \"1h\", \"limit\": 3, \"failure_mode\": \"fm\", \"trips\": \"per-agent\"}],"
           "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
}

// agents_config with routes added (before "crm") that the writer agent may use too.
std::string with_writer_routes(std::string cfg, const std::string& routes_json, const std::string& names) {
    const std::string crm = "{\"name\": \"crm\",";
    EXPECT_NE(cfg.find(crm), std::string::npos);
    cfg.insert(cfg.find(crm), routes_json);
    const std::string writer_routes = "\"routes\": [\"mail-send\"]";
    EXPECT_NE(cfg.find(writer_routes), std::string::npos);
    cfg.replace(cfg.find(writer_routes), writer_routes.size(), "\"routes\": [\"mail-send\", " + names + "]");
    return cfg;
}

response mail(std::uint16_t port, const std::string& key, const std::string& header = "x-breakerbox-key") {
    std::vector<std::pair<std::string, std::string>> h{{"content-type", "application/json"}};
    if (!key.empty()) {
        h.emplace_back(header, header == "proxy-authorization" ? "Bearer " + key : key);
    }
    return http_request(port, http::verb::post, "/v3/mail/send",
                        R"({"personalizations":[{"to":[{"email":"a@example.com"}]}],"subject":"hi"})", h);
}

std::string code_of(const response& r) {
    const auto& b = r.body();
    const auto k = b.find("\"code\":\"");
    return k == std::string::npos ? std::string{} : b.substr(k + 8, b.find('"', k + 8) - k - 8);
}

}  // namespace

TEST(agents, identity_scope_and_key_stripping) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = agents_config(up.port(), dir);
    const std::string off = "\"access_log\": \"off\"";
    cfg.replace(cfg.find(off), off.size(), "\"access_log\": \"" + dir + "/access.log\"");
    proxy_instance bb{cfg};
    auto none = mail(bb.port(), "");
    EXPECT_EQ(none.result_int(), 401u);
    EXPECT_EQ(code_of(none), "unauthenticated");
    EXPECT_EQ(mail(bb.port(), "guess").result_int(), 401u);
    auto ok = mail(bb.port(), "writer-key");
    ASSERT_EQ(ok.result_int(), 202u) << ok.body();
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req.count("x-breakerbox-key"), 0u) << "the agent key is never forwarded";
    // Proxy-Authorization: Bearer identifies too, and is not forwarded either (hop-by-hop).
    EXPECT_EQ(mail(bb.port(), "writer-key", "proxy-authorization").result_int(), 202u);
    EXPECT_EQ(up.requests()[1].req.count(http::field::proxy_authorization), 0u);
    // Outside the allow list: 403 naming the agent.
    auto get = http_request(bb.port(), http::verb::get, "/crm/v3/objects/contacts", "", {{"x-breakerbox-key", "writer-key"}});
    EXPECT_EQ(get.result_int(), 403u);
    EXPECT_EQ(code_of(get), "out_of_scope");
    EXPECT_NE(get.body().find("agent writer"), std::string::npos) << get.body();
    EXPECT_EQ(get["x-breakerbox-decision"], "denied");
    auto read = http_request(bb.port(), http::verb::get, "/crm/v3/objects/contacts", "", {{"x-breakerbox-key", "reader-key"}});
    EXPECT_EQ(read.result_int(), 202u);
    auto other_path = http_request(bb.port(), http::verb::get, "/crm/v4/owners", "", {{"x-breakerbox-key", "reader-key"}});
    EXPECT_EQ(other_path.result_int(), 403u);
    EXPECT_EQ(mail(bb.port(), "reader-key").result_int(), 403u);
    EXPECT_EQ(up.request_count(), 3u);

    // A refused caller's line says what it asked for; the key it tried is never logged.
    bb.stop();  // flushes the log
    std::ifstream in{dir + "/access.log"};
    std::vector<std::string> refused;
    for (std::string line; std::getline(in, line);) {
        if (line.find("\"status\":401") != std::string::npos) {
            refused.push_back(line);
        }
    }
    ASSERT_EQ(refused.size(), 2u);
    for (const auto& line : refused) {
        EXPECT_NE(line.find("\"method\":\"POST\",\"target\":\"/v3/mail/send\""), std::string::npos) << line;
        EXPECT_NE(line.find("\"code\":\"unauthenticated\""), std::string::npos) << line;
        EXPECT_EQ(line.find("guess"), std::string::npos) << line;
    }
}

// HTTP_PROXY=http://writer:writer-key@host makes curl, Python, Go and Node send
// `Proxy-Authorization: Basic base64(writer:writer-key)`: the password is the key (or the
// user when there is none). A credential that names no key is refused with the reason, not
// read as none: where identity is optional that would send the agent's traffic unscoped and
// past its kill switch.
TEST(agents, proxy_basic_credentials_name_the_agent_and_unreadable_ones_are_refused) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = agents_config(up.port(), dir);
    const std::string required = "\"require_agent\": true";
    ASSERT_NE(cfg.find(required), std::string::npos);
    cfg.replace(cfg.find(required), required.size(), "\"require_agent\": false");
    proxy_instance bb{cfg};
    auto base64 = [](std::string_view s) {
        std::string out(4 * ((s.size() + 2) / 3) + 1, '\0');
        const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                      reinterpret_cast<const unsigned char*>(s.data()), static_cast<int>(s.size()));
        out.resize(static_cast<std::size_t>(n));
        return out;
    };
    auto get_as = [&](const std::string& credentials) {
        return http_request(bb.port(), http::verb::get, "/crm/v3/objects/contacts", "",
                            {{"proxy-authorization", credentials}});
    };
    // Anonymous traffic is allowed on this listener; the writer may not read the CRM.
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/crm/v3/objects/contacts", "").result_int(), 202u);
    for (const std::string& userpass : {std::string{"writer:writer-key"}, std::string{"writer-key:"},
                                        std::string{"anyone:writer-key"}}) {
        auto r = get_as("Basic " + base64(userpass));
        EXPECT_EQ(r.result_int(), 403u) << userpass << ": " << r.body();
        EXPECT_EQ(code_of(r), "out_of_scope") << userpass;
        EXPECT_NE(r.body().find("agent writer"), std::string::npos) << r.body();
    }
    auto sent = http_request(bb.port(), http::verb::post, "/v3/mail/send",
                             R"({"personalizations":[{"to":[{"email":"a@example.com"}]}],"subject":"hi"})",
                             {{"content-type", "application/json"}, {"proxy-authorization", "basic " + base64("w:writer-key")}});
    EXPECT_EQ(sent.result_int(), 202u) << sent.body();
    EXPECT_EQ(up.requests().back().req.count(http::field::proxy_authorization), 0u);
    // Credentials that name no key: 401 with the reason (the credential itself is not echoed).
    const std::pair<std::string, std::string> unreadable[] = {
        {"Basic " + base64("writer-key"), "not base64 of user:password"},
        {"Basic %%%", "not base64 of user:password"},
        {"Basic " + base64(":"), "hold no agent key"},
        {"Bearer ", "hold no agent key"},
        {"Digest username=\"writer\"", "scheme other than Bearer or Basic"},
        {"Basic " + base64("writer:guess"), "agent key is not known"},
    };
    for (const auto& [credentials, why] : unreadable) {
        auto r = get_as(credentials);
        EXPECT_EQ(r.result_int(), 401u) << credentials << ": " << r.body();
        EXPECT_EQ(code_of(r), "unauthenticated") << credentials;
        EXPECT_NE(r.body().find(why), std::string::npos) << credentials << ": " << r.body();
    }
    // An empty x-breakerbox-key (an unset variable in the client), or two of them, names no
    // key: refused, not sent on unscoped (out of reach of agent/writer's kill switch).
    auto empty = http_request(bb.port(), http::verb::get, "/crm/v3/objects/contacts", "", {{"x-breakerbox-key", ""}});
    EXPECT_EQ(empty.result_int(), 401u) << empty.body();
    EXPECT_NE(empty.body().find("x-breakerbox-key is empty"), std::string::npos) << empty.body();
    // A request head sent as written (two lines of one header): 401 naming `why`.
    const auto refused_as_written = [&](const std::string& head, const std::string& why) {
        raw_client c{bb.port()};
        c.send(head);
        auto res = c.read_response();
        EXPECT_EQ(res.result_int(), 401u) << res.body();
        EXPECT_NE(res.body().find(why), std::string::npos) << res.body();
    };
    refused_as_written("GET /crm/v3/objects/contacts HTTP/1.1\r\nHost: x\r\nx-breakerbox-key:\r\n"
                       "x-breakerbox-key: writer-key\r\n\r\n",
                       "more than once");
    // x-breakerbox-key beside Proxy-Authorization: both must name the same agent (a reader
    // key in the header must not lift a writer's HTTP_PROXY traffic to another scope, nor
    // the reverse); an unreadable one beside a good key is refused too.
    const std::pair<std::string, std::string> two[] = {
        {"Bearer writer-key", "x-breakerbox-key names agent reader but Proxy-Authorization names agent writer"},
        {"Basic " + base64("w:nobody-key"), "x-breakerbox-key names agent reader but Proxy-Authorization names no known agent"},
        {"Digest username=\"writer\"", "scheme other than Bearer or Basic, beside x-breakerbox-key"},
    };
    for (const auto& [credentials, why] : two) {
        auto r = http_request(bb.port(), http::verb::get, "/crm/v3/objects/contacts", "",
                              {{"x-breakerbox-key", "reader-key"}, {"proxy-authorization", credentials}});
        EXPECT_EQ(r.result_int(), 401u) << credentials << ": " << r.body();
        EXPECT_NE(r.body().find(why), std::string::npos) << credentials << ": " << r.body();
    }
    auto same = http_request(bb.port(), http::verb::get, "/crm/v3/objects/contacts", "",
                             {{"x-breakerbox-key", "reader-key"}, {"proxy-authorization", "Basic " + base64("r:reader-key")}});
    EXPECT_EQ(same.result_int(), 202u) << same.body();
    // Two Proxy-Authorization lines: neither is read as the credential.
    refused_as_written("GET /crm/v3/objects/contacts HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer reader-key\r\n"
                       "Proxy-Authorization: Bearer writer-key\r\n\r\n",
                       "Proxy-Authorization is given more than once");
    EXPECT_EQ(up.request_count(), 3u);
}

TEST(agents, kill_switch_sandbox_and_agent_keyed_rules) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{agents_config(up.port(), dir)};
    // The per-agent kill switch: an operator trips agent/writer; reader is unaffected.
    ASSERT_TRUE(bb.server().breakers()->manual_trip("agent/writer", "ops", "runaway loop", bb.server().now()));
    auto off = mail(bb.port(), "writer-key");
    EXPECT_EQ(off.result_int(), 503u);
    EXPECT_EQ(code_of(off), "agent_disabled");
    EXPECT_NE(off.body().find("agent/writer"), std::string::npos);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/crm/v3/objects/x", "", {{"x-breakerbox-key", "reader-key"}})
                  .result_int(),
              202u);
    ASSERT_TRUE(bb.server().breakers()->reset("agent/writer", "ops", "fixed", bb.server().now()));
    EXPECT_EQ(mail(bb.port(), "writer-key").result_int(), 202u);
    // A sandboxed agent's mail goes out in SendGrid's sandbox mode.
    auto trial = mail(bb.port(), "trial-key");
    EXPECT_EQ(trial.result_int(), 202u);
    EXPECT_EQ(trial["x-breakerbox-decision"], "sandboxed");
    const auto reqs = up.requests();
    EXPECT_NE(reqs.back().req.body().find("\"sandbox_mode\":{\"enable\":true}"), std::string::npos) << reqs.back().req.body();
    // Only a mail send has a dry-run switch: a sandboxed agent's CRM write is refused, not
    // forwarded with a SendGrid flag HubSpot would ignore.
    const auto before = up.request_count();
    auto crm = http_request(bb.port(), http::verb::post, "/crm/v3/objects/contacts/batch/archive",
                            R"({"inputs":[{"id":"1"},{"id":"2"}]})",
                            {{"x-breakerbox-key", "trial-key"}, {"content-type", "application/json"}});
    EXPECT_EQ(crm.result_int(), 503u);
    EXPECT_EQ(code_of(crm), "sandbox_failed");
    auto form = http_request(bb.port(), http::verb::patch, "/crm/v3/objects/contacts/1", "a=b",
                             {{"x-breakerbox-key", "trial-key"}, {"content-type", "application/x-www-form-urlencoded"}});
    EXPECT_EQ(form.result_int(), 503u);
    EXPECT_EQ(up.request_count(), before) << "nothing of a sandboxed agent reaches a real API without a dry-run switch";
    // A Mailgun message on a route without rules (nothing else reads its body) is switched to
    // test mode; compressed, the switch cannot be written into it, so it is refused.
    const std::vector<std::pair<std::string, std::string>> mg{{"x-breakerbox-key", "trial-key"},
                                                               {"content-type", "application/x-www-form-urlencoded"}};
    auto plain = http_request(bb.port(), http::verb::post, "/crm/v3/mg.example.com/messages", "to=a%40example.com&text=hi", mg);
    ASSERT_EQ(plain.result_int(), 202u) << plain.body();
    EXPECT_NE(up.requests().back().req.body().find("o%3Atestmode=yes"), std::string::npos) << up.requests().back().req.body();
    auto mg_gzip = mg;
    mg_gzip.emplace_back("content-encoding", "gzip");
    auto gz = http_request(bb.port(), http::verb::post, "/crm/v3/mg.example.com/messages",
                           std::string{"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03+\xc9\xb7", 13}, mg_gzip);
    // (Refused before the sandbox sees it: no compressed form is accepted, since its fields,
    // a method override among them, cannot be read.)
    EXPECT_EQ(gz.result_int(), 415u) << gz.body();
    EXPECT_EQ(code_of(gz), "unsupported_content_encoding");
    EXPECT_NE(gz.body().find("Content-Encoding gzip"), std::string::npos) << gz.body();
    EXPECT_EQ(up.request_count(), before + 1) << "a compressed sandboxed message never reaches the API";
    // The agent is a rule key: 3 mails an hour each.
    EXPECT_EQ(mail(bb.port(), "writer-key").result_int(), 202u);
    EXPECT_EQ(mail(bb.port(), "writer-key").result_int(), 202u);
    auto fourth = mail(bb.port(), "writer-key");
    EXPECT_EQ(fourth.result_int(), 503u);
    EXPECT_NE(fourth.body().find("per-agent/writer"), std::string::npos) << fourth.body();
    EXPECT_EQ(mail(bb.port(), "trial-key").result_int(), 202u) << "another agent has its own meter";
}

// Identity is decided on the head: an unauthenticated client cannot make breakerbox wait
// for (and buffer) a body first.
TEST(agents, an_unknown_caller_is_refused_before_its_body_is_read) {
    fake_upstream up;
    const auto dir = temp_dir();
    proxy_instance bb{agents_config(up.port(), dir)};
    raw_client client{bb.port()};
    client.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                "Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n");
    auto res = client.read_response();  // no body sent, and none needed for the answer
    EXPECT_EQ(res.result_int(), 401u) << res.body();
    EXPECT_EQ(code_of(res), "unauthenticated");
    EXPECT_EQ(up.request_count(), 0u);
}

TEST(agents, body_constraints_hold_an_agent_to_its_recipients_and_senders) {
    fake_upstream up;
    const auto dir = temp_dir();
    proxy_instance bb{agents_config(up.port(), dir)};
    auto send = [&](const std::string& body) {
        return http_request(bb.port(), http::verb::post, "/v3/mail/send", body,
                            {{"content-type", "application/json"}, {"x-breakerbox-key", "writer-key"}});
    };
    auto ok = send(R"({"personalizations":[{"to":[{"email":"a@x.com"}],"cc":[{"email":"b@x.com"}]}],)"
                   R"("from":{"email":"news@example.com"}})");
    EXPECT_EQ(ok.result_int(), 200u) << ok.body();
    auto many = send(R"({"personalizations":[{"to":[{"email":"a@x.com"},{"email":"b@x.com"}]},)"
                     R"({"to":[{"email":"c@x.com"}]}],"from":{"email":"news@example.com"}})");
    EXPECT_EQ(many.result_int(), 403u);
    EXPECT_EQ(code_of(many), "constraint_violated");
    EXPECT_NE(many.body().find("writer"), std::string::npos) << many.body();
    EXPECT_EQ(many.body().find("c@x.com"), std::string::npos) << "no recipient addresses in errors";
    auto sender = send(R"({"personalizations":[{"to":[{"email":"a@x.com"}]}],"from":{"email":"ceo@other.com"}})");
    EXPECT_EQ(sender.result_int(), 403u);
    EXPECT_NE(sender.body().find("other.com"), std::string::npos) << sender.body();
    auto garbage = send("{not json");
    EXPECT_EQ(garbage.result_int(), 400u);
    EXPECT_EQ(code_of(garbage), "bad_body");
    EXPECT_EQ(up.request_count(), 1u) << "only the request within its constraints went out";
}

// Mailgun names the sending domain in its path: a From at an allowed domain does not make a
// send on another brand's domain (its DKIM, its reputation) allowed.
TEST(agents, a_mailgun_send_is_held_to_from_domains_by_its_path_too) {
    fake_upstream up;
    const auto dir = temp_dir();
    proxy_instance bb{with_writer_routes(
        agents_config(up.port(), dir),
        "{\"name\": \"mailgun\", \"match\": {\"path_prefix\": \"/v3/\"}, \"upstream\": \"up\"},", "\"mailgun\"")};
    auto send = [&](const std::string& path) {
        return http_request(bb.port(), http::verb::post, path, "from=news%40example.com&to=a%40x.com&text=hi",
                            {{"content-type", "application/x-www-form-urlencoded"}, {"x-breakerbox-key", "writer-key"}});
    };
    EXPECT_EQ(send("/v3/example.com/messages").result_int(), 200u);
    EXPECT_EQ(send("/v3/mg.example.com/messages").result_int(), 200u) << "a subdomain of an allowed from domain";
    for (const std::string path : {"/v3/other-brand.com/messages", "/v3/other-brand.com/messages.mime",
                                   "/v3/notexample.com/messages"}) {
        auto res = send(path);
        EXPECT_EQ(res.result_int(), 403u) << path << ": " << res.body();
        EXPECT_EQ(code_of(res), "constraint_violated") << path;
        EXPECT_NE(res.body().find("sending domain"), std::string::npos) << res.body();
    }
    EXPECT_EQ(up.request_count(), 2u);
}

// Scheduling a stored SendGrid Single Send or campaign sends to lists no body shows: refused
// to an agent with constraints (the method and the path reach the check), reading it is not.
TEST(agents, scheduling_stored_sendgrid_mail_is_refused_to_a_constrained_agent) {
    fake_upstream up;
    const auto dir = temp_dir();
    std::string cfg = with_writer_routes(
        agents_config(up.port(), dir),
        "{\"name\": \"marketing\", \"match\": {\"path_prefix\": \"/v3/\"}, \"upstream\": \"up\"},", "\"marketing\"");
    const std::string methods = "\"methods\": [\"POST\"]";
    ASSERT_NE(cfg.find(methods), std::string::npos);
    cfg.replace(cfg.find(methods), methods.size(), "\"methods\": [\"POST\", \"PUT\", \"GET\"]");
    proxy_instance bb{cfg};
    auto call = [&](http::verb method, const std::string& path, const std::string& body) {
        return http_request(bb.port(), method, path, body,
                            {{"content-type", "application/json"}, {"x-breakerbox-key", "writer-key"}});
    };
    for (const auto& [method, path] : std::initializer_list<std::pair<http::verb, std::string>>{
             {http::verb::put, "/v3/marketing/singlesends/3f1c2d/schedule"},
             {http::verb::post, "/v3/campaigns/986724/schedules/now"}}) {
        auto res = call(method, path, R"({"send_at": "now"})");
        EXPECT_EQ(res.result_int(), 403u) << path << ": " << res.body();
        EXPECT_EQ(code_of(res), "constraint_violated") << path;
        EXPECT_NE(res.body().find("stored"), std::string::npos) << res.body();
    }
    auto test_send = call(http::verb::post, "/v3/marketing/test/send_email",
                          R"({"template_id": "d-1", "from_address": "news@example.com", "emails": ["a@x.com", "b@x.com", "c@x.com"]})");
    EXPECT_EQ(test_send.result_int(), 403u) << test_send.body();
    EXPECT_NE(test_send.body().find("3 recipients in one request"), std::string::npos) << test_send.body();
    EXPECT_EQ(call(http::verb::get, "/v3/marketing/singlesends/3f1c2d/schedule", "").result_int(), 200u);
    EXPECT_EQ(up.request_count(), 1u) << "only the read went out";
}

// An agent allowed emailSimple under a recipient cap cannot send past it through a
// Salesforce composite request, whose subrequests' bodies its constraints do not read.
TEST(agents, email_simple_inside_a_composite_request_is_refused_to_a_constrained_agent) {
    fake_upstream up;
    const auto dir = temp_dir();
    proxy_instance bb{with_writer_routes(
        agents_config(up.port(), dir),
        "{\"name\": \"sf\", \"match\": {\"path_prefix\": \"/services/\"}, \"upstream\": \"up\"},", "\"sf\"")};
    auto post = [&](const std::string& path, const std::string& body) {
        return http_request(bb.port(), http::verb::post, path, body,
                            {{"content-type", "application/json"}, {"x-breakerbox-key", "writer-key"}});
    };
    const std::string inputs = R"j({"inputs": [{"emailAddresses": "a@x.com, b@x.com, c@x.com", "emailSubject": "s", "emailBody": "b"}]})j";
    auto direct = post("/services/data/v59.0/actions/standard/emailSimple", inputs);
    EXPECT_EQ(direct.result_int(), 403u) << direct.body();
    EXPECT_NE(direct.body().find("3 recipients in one request"), std::string::npos) << direct.body();
    auto composite = post("/services/data/v59.0/composite",
                          R"j({"compositeRequest": [{"method": "POST", "url": "/services/data/v59.0/actions/standard/emailSimple",
                              "referenceId": "m", "body": )j" + inputs + "}]}");
    EXPECT_EQ(composite.result_int(), 403u) << composite.body();
    EXPECT_EQ(code_of(composite), "constraint_violated");
    EXPECT_NE(composite.body().find("calls emailSimple"), std::string::npos) << composite.body();
    auto escaped = post("/services/data/v59.0/composite",
                        R"j({"compositeRequest": [{"method": "POST", "url": "/services/data/v59.0/actions/standard/email%53imple",
                            "referenceId": "m", "body": )j" + inputs + "}]}");
    EXPECT_EQ(escaped.result_int(), 403u) << escaped.body();
    EXPECT_NE(escaped.body().find("its URL contains"), std::string::npos) << escaped.body();
    auto records = post("/services/data/v59.0/composite",
                        R"j({"compositeRequest": [{"method": "POST", "url": "/services/data/v59.0/sobjects/Account",
                            "referenceId": "a", "body": {"Name": "x"}}]})j");
    EXPECT_EQ(records.result_int(), 200u) << records.body();
    EXPECT_EQ(up.request_count(), 1u);
}

// A Bulk API job says in its body what it will do: an agent allowed GET, POST and PATCH on
// /services/data/* may create an insert job, not a hardDelete one (it would delete through a
// POST), in JSON, in a multipart body's job part or as Bulk API 1.0's XML jobInfo.
TEST(agents, a_bulk_api_job_is_judged_as_the_request_it_stands_for) {
    fake_upstream up;
    const auto dir = temp_dir();
    std::string cfg = with_writer_routes(agents_config(up.port(), dir),
                                         "{\"name\": \"sf\", \"match\": {\"path_prefix\": \"/services/\"}, \"upstream\": \"up\"},",
                                         "\"sf\"");
    const std::string reader = R"("allow": {"methods": ["GET"], "paths": ["/crm/v3/objects/*"]})";
    ASSERT_NE(cfg.find(reader), std::string::npos);
    cfg.replace(cfg.find(reader), reader.size(),
                R"("allow": {"methods": ["GET", "POST", "PATCH"], "paths": ["/services/data/*", "/services/async/*"]})");
    proxy_instance bb{cfg};
    auto post = [&](const std::string& path, const std::string& type, const std::string& body) {
        return http_request(bb.port(), http::verb::post, path, body,
                            {{"content-type", type}, {"x-breakerbox-key", "reader-key"}});
    };
    const auto deleting = post("/services/data/v59.0/jobs/ingest", "application/json",
                               R"({"object": "Account", "contentType": "CSV", "operation": "hardDelete"})");
    EXPECT_EQ(deleting.result_int(), 403u) << deleting.body();
    EXPECT_EQ(code_of(deleting), "out_of_scope");
    EXPECT_NE(deleting.body().find("method DELETE (the Bulk API job's operation hardDelete)"), std::string::npos)
        << deleting.body();
    const std::string multipart =
        "--b\r\nContent-Disposition: form-data; name=\"job\"\r\nContent-Type: application/json\r\n\r\n"
        R"({"object":"Contact","operation":"delete"})"
        "\r\n--b\r\nContent-Disposition: form-data; name=\"content\"; filename=\"c.csv\"\r\n\r\nId\n003\r\n--b--\r\n";
    EXPECT_EQ(post("/services/data/v59.0/jobs/ingest/", "multipart/form-data; boundary=b", multipart).result_int(), 403u);
    const auto v1 = post("/services/async/59.0/job", "application/xml",
                         "<?xml version=\"1.0\"?><jobInfo xmlns=\"http://www.force.com/2009/06/asyncapi/dataload\">"
                         "<operation>delete</operation><object>Lead</object></jobInfo>");
    EXPECT_EQ(v1.result_int(), 403u) << v1.body();
    const auto twice = post("/services/data/v59.0/jobs/ingest", "application/json",
                            R"({"object": "Account", "operation": "insert", "operation": "hardDelete"})");
    EXPECT_EQ(twice.result_int(), 403u) << twice.body();
    EXPECT_NE(twice.body().find("cannot be read"), std::string::npos) << twice.body();
    EXPECT_EQ(up.request_count(), 0u);
    const auto inserting = post("/services/data/v59.0/jobs/ingest", "application/json",
                                R"({"object": "Account", "contentType": "CSV", "operation": "insert"})");
    EXPECT_EQ(inserting.result_int(), 200u) << inserting.body();
    const auto updating = post("/services/async/59.0/job", "application/xml",
                               "<jobInfo><operation>update</operation><object>Lead</object></jobInfo>");
    EXPECT_EQ(updating.result_int(), 200u) << updating.body();
    EXPECT_EQ(up.request_count(), 2u);
}

// Mailgun's SDKs take https://api.mailgun.net/v3 as their base URL: with an upstream that
// carries /v3, the client sends /{domain}/messages, judged as the path the upstream gets.
TEST(agents, a_mailgun_send_under_an_upstream_base_path_is_held_to_from_domains) {
    fake_upstream up;
    const auto dir = temp_dir();
    std::string cfg = agents_config(up.port(), dir);
    const std::string upstreams = "\"upstreams\": [";
    ASSERT_NE(cfg.find(upstreams), std::string::npos);
    cfg.insert(cfg.find(upstreams) + upstreams.size(),
               "{\"name\": \"mg\", \"url\": \"http://127.0.0.1:" + std::to_string(up.port()) + "/v3\"},");
    cfg = with_writer_routes(cfg,
                             "{\"name\": \"mailgun\", \"match\": {\"path_prefix\": \"/mg.\"}, \"upstream\": \"mg\"},"
                             "{\"name\": \"mailgun-other\", \"match\": {\"path_prefix\": \"/other\"}, \"upstream\": \"mg\"},",
                             "\"mailgun\", \"mailgun-other\"");
    proxy_instance bb{cfg};
    auto send = [&](const std::string& path) {
        return http_request(bb.port(), http::verb::post, path, "from=news%40example.com&to=a%40x.com&text=hi",
                            {{"content-type", "application/x-www-form-urlencoded"}, {"x-breakerbox-key", "writer-key"}});
    };
    EXPECT_EQ(send("/mg.example.com/messages").result_int(), 200u);
    auto res = send("/other-brand.com/messages");
    EXPECT_EQ(res.result_int(), 403u) << res.body();
    EXPECT_NE(res.body().find("other-brand.com\\\" (the Mailgun path)"), std::string::npos) << res.body();
    EXPECT_EQ(up.request_count(), 1u);
}

TEST(agents, widening_an_agents_scope_needs_the_admin_role) {
    fake_upstream up;
    const auto dir = temp_dir();
    auto with_admin = [&](const std::string& reader_allow) {
        std::string cfg = agents_config(up.port(), dir);
        cfg.insert(1, "\"admin\": {\"address\": \"127.0.0.1:0\", \"tokens\": ["
                      "{\"name\": \"op\", \"role\": \"operator\", \"sha256\": \"" + sha256_hex("op-token") + "\"},"
                      "{\"name\": \"ad\", \"role\": \"admin\", \"sha256\": \"" + sha256_hex("admin-token") + "\"}]},");
        const auto at = cfg.find("\"allow\": {\"methods\": [\"GET\"]");
        EXPECT_NE(at, std::string::npos);
        const auto end = cfg.find("}", at) + 1;
        cfg.replace(at, end - at, reader_allow);
        return cfg;
    };
    proxy_instance bb{with_admin(R"("allow": {"methods": ["GET"], "paths": ["/crm/v3/objects/*"]})")};
    const auto port = bb.server().admin_port();
    const std::string wider = with_admin(R"("allow": {"methods": ["GET", "POST"], "paths": ["/crm/v3/objects/*"]})");
    auto as_op = http_request(port, http::verb::post, "/v1/config", "{\"reason\":\"let reader write\",\"config\":" + wider + "}",
                              {{"authorization", "Bearer op-token"}, {"content-type", "application/json"}});
    EXPECT_EQ(as_op.result_int(), 403u) << as_op.body();
    EXPECT_NE(as_op.body().find("widens the scope of agent reader"), std::string::npos) << as_op.body();
    auto as_admin = http_request(port, http::verb::post, "/v1/config", "{\"reason\":\"let reader write\",\"config\":" + wider + "}",
                                 {{"authorization", "Bearer admin-token"}, {"content-type", "application/json"}});
    EXPECT_EQ(as_admin.result_int(), 200u) << as_admin.body();
    EXPECT_EQ(mail(bb.port(), "reader-key").result_int(), 403u) << "POST is allowed now, but mail-send is not under /crm/";
    // The agent is a metrics label (bounded by the configured agents).
    EXPECT_EQ(mail(bb.port(), "writer-key").result_int(), 200u);
    // An identified agent's request refused before its scope is judged (no route here) is
    // its own too: the probes an operator wants tied to an agent.
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/nowhere", "", {{"x-breakerbox-key", "writer-key"}}).result_int(),
              404u);
    // Counted once the response is out, so a scrape right after may be a moment early.
    // Every request's count (each on whichever worker served it) is waited for.
    const std::string want = "breakerbox_agent_requests_total{agent=\"writer\",decision=\"allowed\"} 1";
    const std::string want_denied = "breakerbox_agent_requests_total{agent=\"reader\",decision=\"denied\"} 1";
    const std::string want_rejected = "breakerbox_agent_requests_total{agent=\"writer\",decision=\"rejected\"} 1";
    response metrics;
    for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds{5}; std::chrono::steady_clock::now() < until;) {
        metrics = http_request(port, http::verb::get, "/metrics", "", {{"authorization", "Bearer op-token"}});
        if (metrics.body().find(want) != std::string::npos && metrics.body().find(want_denied) != std::string::npos &&
            metrics.body().find(want_rejected) != std::string::npos) {
            break;
        }
        std::this_thread::yield();
    }
    EXPECT_NE(metrics.body().find("breakerbox_agent_requests_total{agent=\"reader\",decision=\"denied\"} 1"),
              std::string::npos)
        << metrics.body();
    EXPECT_NE(metrics.body().find("breakerbox_agent_requests_total{agent=\"writer\",decision=\"allowed\"} 1"),
              std::string::npos);
    EXPECT_NE(metrics.body().find(want_rejected), std::string::npos) << metrics.body();
}

// An upstream whose URL carries Salesforce's base path (clients POST /v59.0/composite): the
// request is still read as the composite request the upstream receives, and a subrequest
// asking for another method is refused as it is on the full path.
TEST(agents, a_composite_request_under_an_upstream_base_path_is_read_as_one) {
    fake_upstream up{[](const request&) { return respond(200, "{}"); }};
    const auto dir = temp_dir();
    proxy_instance bb{
        "{\"workers\": 1, \"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}],"
        "\"store\": {\"path\": \"" + dir + "/bb.db\"},"
        "\"upstreams\": [{\"name\": \"sf\", \"url\": \"http://127.0.0.1:" + std::to_string(up.port()) + "/services/data\"}],"
        "\"routes\": [{\"name\": \"salesforce\", \"match\": {\"path_prefix\": \"/v\"}, \"upstream\": \"sf\"}],"
        "\"failure_modes\": [{\"id\": \"fm\", \"title\": \"Mass delete\", \"severity\": \"sev1\"}],"
        "\"breakers\": [{\"id\": \"crm-deletes\", \"action\": \"pause\", \"reset\": \"manual\"}],"
        "\"rules\": [{\"id\": \"deletes\", \"route\": \"salesforce\", \"preset\": \"salesforce.composite.deletes\","
        "\"window\": \"1h\", \"limit\": 3, \"failure_mode\": \"fm\", \"trips\": \"crm-deletes\"}],"
        "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}"};
    const auto r = http_request(
        bb.port(), http::verb::post, "/v59.0/composite",
        R"({"compositeRequest":[{"method":"POST","url":"/services/data/v59.0/composite/sobjects?ids=a,b&_HttpMethod=DELETE"}]})",
        {{"content-type", "application/json"}});
    EXPECT_EQ(r.result_int(), 400u) << r.body();
    EXPECT_EQ(code_of(r), "method_override") << r.body();
    const auto ok = http_request(bb.port(), http::verb::post, "/v59.0/composite",
                                 R"({"compositeRequest":[{"method":"GET","url":"/services/data/v59.0/limits"}]})",
                                 {{"content-type", "application/json"}});
    EXPECT_EQ(ok.result_int(), 200u) << ok.body();
    EXPECT_EQ(up.request_count(), 1u);
    // The delete cap's preset names Salesforce's path (/services/data/{version}/composite):
    // it meets the client's /v59.0/composite by the path the upstream is sent. Two deletes,
    // then two more: 4 > 3 trips the breaker, and the request that crossed is not sent.
    const std::string two_deletes =
        R"({"compositeRequest":[{"method":"DELETE","url":"/services/data/v59.0/sobjects/Contact/003xx000004TmiQ","referenceId":"a"},)"
        R"({"method":"DELETE","url":"/services/data/v59.0/sobjects/Contact/003xx000004TmiR","referenceId":"b"}]})";
    const auto first = http_request(bb.port(), http::verb::post, "/v59.0/composite", two_deletes,
                                    {{"content-type", "application/json"}});
    EXPECT_EQ(first.result_int(), 200u) << first.body();
    const auto second = http_request(bb.port(), http::verb::post, "/v59.0/composite", two_deletes,
                                     {{"content-type", "application/json"}});
    EXPECT_EQ(second.result_int(), 503u) << second.body();
    EXPECT_EQ(second["x-breakerbox-decision"], "paused");
    EXPECT_EQ(up.request_count(), 2u);
}

// An agent allowed only some routes is held to them inside a composite request too: the
// route that takes a DELETE directly takes it as a subrequest, so an agent allowed only the
// POST route may not delete through /composite. Under an upstream base path, subrequest URLs
// (the upstream's paths) are judged as the paths the agent would send.
TEST(agents, composite_subrequests_are_held_to_the_agents_routes) {
    fake_upstream up{[](const request&) { return respond(200, "{}"); }};
    const auto dir = temp_dir();
    const std::string prefix = "\"match\": {\"path_prefix\": \"/services/data/\", \"methods\": ";
    proxy_instance bb{
        "{\"workers\": 1, \"listeners\": [{\"name\": \"agents\", \"address\": \"127.0.0.1:0\", \"require_agent\": true}],"
        "\"store\": {\"path\": \"" + dir + "/bb.db\"},"
        "\"upstreams\": [{\"name\": \"sf\", \"url\": \"http://127.0.0.1:" + std::to_string(up.port()) + "\"},"
        "{\"name\": \"sf-base\", \"url\": \"http://127.0.0.1:" + std::to_string(up.port()) + "/services/data\"}],"
        "\"routes\": [{\"name\": \"sf-write\", " + prefix + "[\"POST\"]}, \"upstream\": \"sf\"},"
        "{\"name\": \"sf-delete\", " + prefix + "[\"DELETE\"]}, \"upstream\": \"sf\"},"
        "{\"name\": \"sf-read\", " + prefix + "[\"GET\"]}, \"upstream\": \"sf\"},"
        "{\"name\": \"v-write\", \"match\": {\"path_prefix\": \"/v\", \"methods\": [\"POST\"]}, \"upstream\": \"sf-base\"},"
        "{\"name\": \"v-delete\", \"match\": {\"path_prefix\": \"/v\", \"methods\": [\"DELETE\"]}, \"upstream\": \"sf-base\"}],"
        "\"agents\": [{\"id\": \"writer\", \"key_sha256\": [\"" + sha256_hex("w-key") + "\"], \"allow\": {\"routes\": [\"sf-write\"]}},"
        "{\"id\": \"based\", \"key_sha256\": [\"" + sha256_hex("b-key") + "\"],"
        " \"allow\": {\"routes\": [\"v-write\"], \"paths\": [\"/v59.0/*\"]}}],"
        "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}"};
    auto post = [&](const std::string& path, const std::string& body, const std::string& key) {
        return http_request(bb.port(), http::verb::post, path, body,
                            {{"content-type", "application/json"}, {"x-breakerbox-key", key}});
    };
    auto one = [](const std::string& method, const std::string& url) {
        return R"({"compositeRequest":[{"method":")" + method + R"(","url":")" + url + R"(","referenceId":"a"}]})";
    };
    // Directly: the DELETE is another route's.
    EXPECT_EQ(http_request(bb.port(), http::verb::delete_, "/services/data/v59.0/sobjects/Contact/003xx", "",
                           {{"x-breakerbox-key", "w-key"}})
                  .result_int(),
              403u);
    const std::pair<std::string, std::string> refused[] = {
        {one("DELETE", "/services/data/v59.0/sobjects/Contact/003xx"), "route sf-delete in subrequest #0"},
        {one("GET", "/services/data/v59.0/sobjects/Contact/003xx"), "route sf-read in subrequest #0"},
        {one("PATCH", "/services/data/v59.0/sobjects/Contact/003xx"), "none of upstream sf takes PATCH"},
        {one("POST", "/services/apexrest/x"), "none of upstream sf takes POST /services/apexrest/x"},
    };
    // Each refused as out of scope, naming why.
    auto expect_refused = [&](const std::string& path, const std::string& key, const auto& cases) {
        for (const auto& [body, why] : cases) {
            const auto r = post(path, body, key);
            EXPECT_EQ(r.result_int(), 403u) << body << ": " << r.body();
            EXPECT_EQ(code_of(r), "out_of_scope") << r.body();
            EXPECT_NE(r.body().find(why), std::string::npos) << r.body();
        }
    };
    expect_refused("/services/data/v59.0/composite", "w-key", refused);
    EXPECT_EQ(up.request_count(), 0u);
    const auto ok = post("/services/data/v59.0/composite", one("POST", "/services/data/v59.0/sobjects/Contact"), "w-key");
    EXPECT_EQ(ok.result_int(), 200u) << ok.body();

    // Under the base path /services/data: the agent's paths and routes are the client's.
    const auto based_ok = post("/v59.0/composite", one("POST", "/services/data/v59.0/sobjects/Contact"), "b-key");
    EXPECT_EQ(based_ok.result_int(), 200u) << based_ok.body();
    const std::pair<std::string, std::string> based_refused[] = {
        {one("DELETE", "/services/data/v59.0/sobjects/Contact/003xx"), "route v-delete in subrequest #0"},
        {one("POST", "/services/data/v58.0/sobjects/Contact"), "path /v58.0/sobjects/Contact in subrequest #0"},
        {one("POST", "/services/apexrest/x"), "outside upstream sf-base's base path /services/data"},
    };
    expect_refused("/v59.0/composite", "b-key", based_refused);
    EXPECT_EQ(up.request_count(), 2u);
}

// Salesforce's composite resources carry requests of their own in one POST: an agent allowed
// GET and POST on /services/data/* must not DELETE a record through compositeRequest[],
// batchRequests[] or a graph, nor reach a path outside its list there. Each subrequest is
// held to the allow list; a body that does not read as subrequests is refused (closed).
TEST(agents, composite_subrequests_are_held_to_the_allow_list) {
    fake_upstream up{[](const request&) { return respond(200, "{}"); }};
    const auto dir = temp_dir();
    proxy_instance bb{
        "{\"workers\": 1, \"listeners\": [{\"name\": \"agents\", \"address\": \"127.0.0.1:0\", \"require_agent\": true}],"
        "\"store\": {\"path\": \"" + dir + "/bb.db\"},"
        "\"upstreams\": [{\"name\": \"sf\", \"url\": \"http://127.0.0.1:" + std::to_string(up.port()) + "\"}],"
        "\"routes\": [{\"name\": \"salesforce\", \"match\": {\"path_prefix\": \"/services/\"}, \"upstream\": \"sf\"}],"
        "\"agents\": [{\"id\": \"crm-bot\", \"key_sha256\": [\"" + sha256_hex("crm-key") + "\"],"
        " \"allow\": {\"methods\": [\"GET\", \"POST\"], \"paths\": [\"/services/data/*\"]}},"
        "{\"id\": \"admin-bot\", \"key_sha256\": [\"" + sha256_hex("admin-key") + "\"]}],"
        "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}"};
    auto post = [&](const std::string& path, const std::string& body, const std::string& key = "crm-key") {
        return http_request(bb.port(), http::verb::post, path, body,
                            {{"content-type", "application/json"}, {"x-breakerbox-key", key}});
    };
    const std::string del = R"({"method":"DELETE","url":"/services/data/v59.0/sobjects/Contact/003xx","referenceId":"a"})";
    const std::string get = R"({"method":"GET","url":"/services/data/v59.0/sobjects/Contact/003xx?fields=Id","referenceId":"b"})";
    const std::pair<std::string, std::string> refused[] = {
        {"/services/data/v59.0/composite", R"({"compositeRequest":[)" + get + "," + del + "]}"},
        {"/services/data/v59.0/Composite/", R"({"allOrNone":true,"CompositeRequest":[)" + del + "]}"},
        {"/services/data/v59.0/composite/batch", R"({"batchRequests":[{"method":"delete","url":"v59.0/sobjects/Contact/003xx"}]})"},
        {"/services/data/v59.0/composite/graph", R"({"graphs":[{"graphId":"1","compositeRequest":[)" + del + "]}]}"},
        // Outside its paths, with an allowed method.
        {"/services/data/v59.0/composite", R"({"compositeRequest":[{"method":"GET","url":"/services/apexrest/x","referenceId":"c"}]})"},
        // The other spelling of a duplicated key is read too.
        {"/services/data/v59.0/composite", R"({"compositeRequest":[{"method":"GET","method":"DELETE","url":"/services/data/v59.0/x"}]})"},
        {"/services/data/v59.0/composite", R"({"compositeRequest":[{"method":"GET","url":"/services/data/v59.0/../../apexrest/x"}]})"},
        // Another method asked for inside a subrequest, by its query or its headers.
        {"/services/data/v59.0/composite", R"({"compositeRequest":[{"method":"POST","url":"/services/data/v59.0/sobjects/Contact/003xx?_HttpMethod=DELETE"}]})"},
        {"/services/data/v59.0/composite", R"({"compositeRequest":[{"method":"POST","url":"/services/data/v59.0/sobjects/Contact/003xx","httpHeaders":{"X-HTTP-Method-Override":"DELETE"}}]})"},
        // The Tooling API's composite and Connect's batch (URLs relative to /services/data).
        {"/services/data/v59.0/tooling/composite", R"({"compositeRequest":[)" + del + "]}"},
        {"/services/data/v59.0/connect/batch", R"({"batchRequests":[{"method":"Delete","url":"/v59.0/chatter/feed-elements/0D5xx"}]})"},
        // A format suffix names the same resource (REST API up to 57.0).
        {"/services/data/v57.0/composite.json", R"({"compositeRequest":[)" + del + "]}"},
        {"/services/data/v57.0/composite/batch.JSON", R"({"batchRequests":[{"method":"delete","url":"v57.0/sobjects/Contact/003xx"}]})"},
    };
    for (const auto& [path, body] : refused) {
        const auto r = post(path, body);
        EXPECT_EQ(r.result_int(), 403u) << path << " " << body << ": " << r.body();
        EXPECT_EQ(code_of(r), "out_of_scope") << r.body();
        EXPECT_NE(r.body().find("composite request"), std::string::npos) << r.body();
    }
    // Unreadable subrequests are refused, not waved through.
    for (const std::string body : {"not json", R"({"compositeRequest":{"method":"GET"}})",
                                   R"({"compositeRequest":[{"method":"GET"}]})", R"({"compositeRequest":[{"method":7,"url":"/x"}]})"}) {
        const auto r = post("/services/data/v59.0/composite", body);
        EXPECT_EQ(r.result_int(), 403u) << body << ": " << r.body();
    }
    EXPECT_EQ(up.request_count(), 0u);
    // Within its list it goes, and an unrestricted agent is not read at all.
    EXPECT_EQ(post("/services/data/v59.0/composite", R"({"compositeRequest":[)" + get + "]}").result_int(), 200u);
    EXPECT_EQ(post("/services/data/v59.0/composite/batch", R"({"batchRequests":[{"method":"GET","url":"v59.0/limits"}]})").result_int(), 200u);
    EXPECT_EQ(post("/services/data/v59.0/composite", R"({"compositeRequest":[)" + del + "]}", "admin-key").result_int(), 200u);
    // Nor may anyone else ask for another method inside a subrequest: the delete caps
    // count DELETE subrequests (400, as a `_method` form field is).
    for (const std::string body :
         {R"({"compositeRequest":[{"method":"POST","url":"/services/data/v59.0/composite/sobjects?ids=a,b&_HttpMethod=DELETE"}]})",
          R"({"compositeRequest":[{"method":"POST","url":"/services/data/v59.0/sobjects/Contact/003xx","httpHeaders":{"X-HTTP-Method-Override":"DELETE"}}]})",
          // After a byte order mark, which Salesforce's JSON reader passes over.
          "\xEF\xBB\xBF" R"({"compositeRequest":[{"method":"POST","url":"/services/data/v59.0/sobjects/Contact/003xx?_HttpMethod=DELETE"}]})"}) {
        const auto r = post("/services/data/v59.0/composite", body, "admin-key");
        EXPECT_EQ(r.result_int(), 400u) << body << ": " << r.body();
        EXPECT_EQ(code_of(r), "method_override") << r.body();
    }
    // Nor a JSON body read only part of the way (a duplicate key of another type before the
    // real list, a null httpHeaders): what follows could hide one.
    for (const std::string body :
         {R"({"compositeRequest":"x","compositeRequest":[{"method":"POST","url":"/services/data/v59.0/composite/sobjects?ids=a&_HttpMethod=DELETE"}]})",
          R"({"compositeRequest":[{"method":"GET","url":"/services/data/v59.0/limits","httpHeaders":null},{"method":"POST","url":"/x?_HttpMethod=DELETE"}]})"}) {
        const auto r = post("/services/data/v59.0/composite", body, "admin-key");
        EXPECT_EQ(r.result_int(), 400u) << body << ": " << r.body();
        EXPECT_EQ(code_of(r), "bad_body") << r.body();
    }
    EXPECT_EQ(post("/services/data/v59.0/sobjects/Contact", R"({"LastName":"x"})").result_int(), 200u);
    EXPECT_EQ(post("/services/data/v59.0/connect/batch", R"({"batchRequests":[{"method":"Get","url":"/v59.0/chatter/users/me"}]})").result_int(), 200u);
    // A GET of /composite lists the resources: it has no subrequests to read.
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/services/data/v59.0/composite", "", {{"x-breakerbox-key", "crm-key"}})
                  .result_int(),
              200u);
    EXPECT_EQ(up.request_count(), 6u);
}
