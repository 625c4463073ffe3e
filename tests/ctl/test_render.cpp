// Rendering is pure: sample bodies in the shapes of docs/admin-api.md, text out.
#include "ctl/render.hpp"

#include <gtest/gtest.h>

namespace bb::ctl {
namespace {

// 2026-03-01T12:00:00Z
constexpr std::int64_t t0 = 1772366400000;

TEST(CtlRender, Iso8601) {
    EXPECT_EQ(iso8601(0), "1970-01-01T00:00:00Z");
    EXPECT_EQ(iso8601(t0), "2026-03-01T12:00:00Z");
    EXPECT_EQ(iso8601(t0 + 5250), "2026-03-01T12:00:05.250Z");
    EXPECT_EQ(iso8601(951782400000), "2000-02-29T00:00:00Z");
    EXPECT_EQ(iso8601(-1000), "1969-12-31T23:59:59Z");
}

TEST(CtlRender, TableAlignsColumnsByCodePoints) {
    table t{{"A", "BB", "C"}};
    t.add({"xxxx", "é", "last"});
    t.add({"y", "zzz", ""});
    EXPECT_EQ(t.to_string(),
              "A     BB   C\n"
              "xxxx  é    last\n"
              "y     zzz\n");
    // Control characters from the server cannot break a row.
    table u{{"X", "Y"}};
    u.add({"a\nb\x1b[31m", "c"});
    EXPECT_EQ(u.to_string(), "X         Y\na b [31m  c\n");
}

TEST(CtlRender, Breakers) {
    const std::string body = R"({"breakers":[
      {"instance":"campaign-volume/spring-sale","breaker":"campaign-volume","key":"spring-sale","action":"quarantine",
       "state":"open","mode":"auto","mode_expires_at":null,"opened_at":1772366400000,"cooldown_ms":30000,"trips":3,
       "last_trip":{"kind":"rule","actor":"","reason":"","rule":"recipients-per-campaign","key":"spring-sale",
                    "value":10001,"limit":10000,"window_ms":3600000,"request_id":"r-1","at":1772366400000}},
      {"instance":"crm-deletes","breaker":"crm-deletes","key":"","action":"pause","state":"closed",
       "mode":"forced_closed","mode_expires_at":1772367000000,"opened_at":null,"cooldown_ms":60000,"trips":12,
       "last_trip":{"kind":"manual","actor":"ops-oncall","reason":"drill","rule":"","key":"","value":0,"limit":0,
                    "window_ms":0,"request_id":"","at":1772366405000}},
      {"instance":"x","breaker":"x","key":"","action":"pause","state":"closed","mode":"auto","mode_expires_at":null,
       "opened_at":null,"cooldown_ms":30000,"trips":0,"last_trip":null}],"total":3})";
    auto r = render_breakers(body);
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->ok);
    EXPECT_EQ(r->text,
              "INSTANCE                     STATE   MODE            TRIPS  LAST-TRIP\n"
              "campaign-volume/spring-sale  open    auto            3      2026-03-01T12:00:00Z rule recipients-per-campaign\n"
              "crm-deletes                  closed  forced_closed*  12     2026-03-01T12:00:05Z manual by ops-oncall\n"
              "x                            closed  auto            0      -\n"
              "* the mode expires; see breakerctl breaker INSTANCE\n");

    auto more = render_breakers(R"({"breakers":[{"instance":"a","state":"closed","mode":"auto","trips":0,"last_trip":null}],"total":1500})");
    ASSERT_TRUE(more);
    EXPECT_NE(more->text.find("showing 1 of 1500 instances"), std::string::npos);
    auto paged = render_breakers(
        R"({"breakers":[{"instance":"a","state":"open","mode":"auto","trips":1,"last_trip":null}],"total":2,"next_after":"a"})");
    ASSERT_TRUE(paged);
    EXPECT_NE(paged->text.find("more: add --after a\n"), std::string::npos) << paged->text;
    EXPECT_EQ(render_breakers(R"({"breakers":[]})")->text, "no breaker instances match\n");
    EXPECT_FALSE(render_breakers("not json"));
    EXPECT_FALSE(render_breakers(R"({"something":"else"})"));
}

TEST(CtlRender, OneBreaker) {
    auto r = render_breaker(R"({"breaker":{"instance":"campaign-volume/spring-sale","breaker":"campaign-volume",
      "key":"spring-sale","action":"quarantine","state":"open","mode":"forced_open","mode_expires_at":1772367000000,
      "opened_at":1772366400000,"cooldown_ms":30000,"trips":1,
      "last_trip":{"kind":"rule","actor":"","reason":"","rule":"recipients-per-campaign","key":"spring-sale",
                   "value":10001,"limit":10000,"window_ms":3600000,"request_id":"r-1","at":1772366400000}}})");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->text,
              "instance:   campaign-volume/spring-sale\n"
              "breaker:    campaign-volume\n"
              "key:        spring-sale\n"
              "action:     quarantine\n"
              "state:      open since 2026-03-01T12:00:00Z\n"
              "mode:       forced_open until 2026-03-01T12:10:00Z\n"
              "cooldown:   30s\n"
              "trips:      1\n"
              "last trip:  2026-03-01T12:00:00Z (rule)\n"
              "  rule:     recipients-per-campaign key spring-sale: 10001 against a limit of 10000 per 1h\n"
              "  request:  r-1\n");
}

TEST(CtlRender, QuarantineList) {
    auto r = render_quarantine_list(R"({"requests":[
      {"ticket":"q_01","state":"held","method":"POST","target":"/v3/mail/send","route":"mail-send","upstream":"sendgrid",
       "agent":"bot-7","rule":"recipients-per-campaign","breaker_instance":"campaign-volume/spring","failure_mode":"volume-spike",
       "request_id":"r1","received_at":1772366400000,"body_bytes":5120,"release_status":null,"release_attempts":0,"discard_reason":""},
      {"ticket":"q_02","state":"outcome_unknown","method":"POST","target":"/v3/mail/send","route":"mail-send","upstream":"sendgrid",
       "agent":"","rule":"r","breaker_instance":"b","failure_mode":"f","request_id":"r2","received_at":1772366401000,
       "body_bytes":12,"release_status":null,"release_attempts":1,"discard_reason":""}],"next_after":"q_02"})");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->text,
              "TICKET  STATE            RECEIVED              METHOD  TARGET         BREAKER                 RULE                     AGENT  BYTES\n"
              "q_01    held             2026-03-01T12:00:00Z  POST    /v3/mail/send  campaign-volume/spring  recipients-per-campaign  bot-7  5120\n"
              "q_02    outcome_unknown  2026-03-01T12:00:01Z  POST    /v3/mail/send  b                       r                        -      12\n"
              "more: add --after q_02\n");
    EXPECT_EQ(render_quarantine_list(R"({"requests":[],"next_after":null})")->text, "no quarantined requests match\n");
}

TEST(CtlRender, QuarantineShow) {
    auto r = render_quarantine_show(R"({"request":{"ticket":"q_01","state":"released","method":"POST","target":"/v3/mail/send",
      "route":"mail-send","upstream":"sendgrid","agent":"bot-7","rule":"r","breaker_instance":"b","failure_mode":"f",
      "request_id":"r1","received_at":1772366400000,"body_bytes":2,"release_status":202,"release_attempts":1,"discard_reason":"",
      "headers":[["content-type","application/json"],["x-campaign-id","spring"]],"body_base64":"e30=",
      "history":[{"from":"held","to":"releasing","at":1772366460000,"actor":"ops","detail":""},
                 {"from":"releasing","to":"released","at":1772366461000,"actor":"ops","detail":"202"}]}})");
    ASSERT_TRUE(r);
    EXPECT_NE(r->text.find("ticket:            q_01\n"), std::string::npos) << r->text;
    EXPECT_NE(r->text.find("request:           POST /v3/mail/send\n"), std::string::npos) << r->text;
    EXPECT_NE(r->text.find("release status:    202\n"), std::string::npos) << r->text;
    EXPECT_NE(r->text.find("body:              2 bytes (body_base64 in --json)\n"), std::string::npos) << r->text;
    auto viewer = render_quarantine_show(R"({"request":{"ticket":"q_01","state":"held","body_bytes":2,"body_redacted":true}})");
    ASSERT_TRUE(viewer);
    EXPECT_NE(viewer->text.find("body:              2 bytes (shown to the operator role and above)\n"), std::string::npos)
        << viewer->text;
    EXPECT_NE(r->text.find("headers:\n  content-type: application/json\n  x-campaign-id: spring\n"), std::string::npos);
    EXPECT_NE(r->text.find("history:\n"
                           "AT                    FROM       TO         ACTOR  DETAIL\n"
                           "2026-03-01T12:01:00Z  held       releasing  ops    -\n"
                           "2026-03-01T12:01:01Z  releasing  released   ops    202\n"),
              std::string::npos)
        << r->text;
}

TEST(CtlRender, QuarantineResultsAndSummaries) {
    auto ok = render_quarantine_result(R"({"result":{"ticket":"q_1","ok":true,"code":"","message":"","status":202}})", "release");
    ASSERT_TRUE(ok);
    EXPECT_TRUE(ok->ok);
    EXPECT_EQ(ok->text, "q_1: released (upstream answered 202)\n");
    auto d = render_quarantine_result(R"({"result":{"ticket":"q_1","ok":true,"code":"","message":"","status":0}})", "discard");
    EXPECT_EQ(d->text, "q_1: discarded\n");
    auto bad = render_quarantine_result(
        R"({"result":{"ticket":"q_1","ok":false,"code":"upstream_error","message":"HTTP 500","status":500}})", "release");
    EXPECT_FALSE(bad->ok);
    EXPECT_EQ(bad->text, "q_1: release failed: upstream_error: HTTP 500 (upstream answered 500)\n");
    auto unknown = render_quarantine_result(
        R"({"result":{"ticket":"q_1","ok":false,"code":"outcome_unknown","message":"Bad Gateway","status":502}})", "release");
    EXPECT_FALSE(unknown->ok);
    EXPECT_EQ(unknown->text.find("release failed"), std::string::npos) << unknown->text;
    EXPECT_NE(unknown->text.find("q_1: outcome unknown: it may have been delivered"), std::string::npos) << unknown->text;

    auto s = render_quarantine_summary(
        R"({"summary":{"matched":10,"released":8,"failed":0,"unknown":0,"discarded":0,"skipped":2}})", "release");
    EXPECT_TRUE(s->ok);
    EXPECT_EQ(s->text, "matched 10: released 8, failed 0, unknown 0, skipped 2\nskipped requests were not sent (changed "
                       "since listed, or refused now); see what is still held with breakerctl quarantine list --state held\n");
    // Every match skipped (the agent switched off, say): nothing was released, not a success.
    auto none = render_quarantine_summary(
        R"({"summary":{"matched":40,"released":0,"failed":0,"unknown":0,"discarded":0,"skipped":40}})", "release");
    EXPECT_FALSE(none->ok);
    auto u = render_quarantine_summary(
        R"({"summary":{"matched":3,"released":1,"failed":1,"unknown":1,"skipped":0}})", "release");
    EXPECT_FALSE(u->ok);
    EXPECT_NE(u->text.find("never retried"), std::string::npos);
    auto h = render_quarantine_summary(
        R"({"summary":{"matched":1,"released":0,"failed":1,"unknown":0,"skipped":0,"halted":"upstream sendgrid answered 429 to q-1"}})",
        "release");
    EXPECT_FALSE(h->ok);
    EXPECT_NE(h->text.find("halted: upstream sendgrid answered 429"), std::string::npos) << h->text;
    auto ds = render_quarantine_summary(R"({"summary":{"matched":4,"discarded":4,"skipped":0}})", "discard");
    EXPECT_TRUE(ds->ok);
    EXPECT_EQ(ds->text, "matched 4: discarded 4, skipped 0\n");
    // Every match skipped (changed since listed), or the store's writer full: nothing, or
    // not all, of what the operator asked for happened.
    EXPECT_FALSE(render_quarantine_summary(R"({"summary":{"matched":3,"discarded":0,"skipped":3}})", "discard")->ok);
    auto dh = render_quarantine_summary(
        R"({"summary":{"matched":3,"discarded":2,"skipped":1,"halted":"the store is busy (full) at q_3"}})", "discard");
    EXPECT_FALSE(dh->ok);
    EXPECT_NE(dh->text.find("halted: the store is busy"), std::string::npos) << dh->text;
    // A run that ended early is no success, whatever it did before.
    auto st = render_quarantine_summary(
        R"({"summary":{"matched":100,"released":100,"failed":0,"unknown":0,"skipped":0,"stopped":true}})", "release");
    EXPECT_FALSE(st->ok);
    EXPECT_NE(st->text.find("stopped: breakerbox began to shut down"), std::string::npos) << st->text;
    auto inc = render_quarantine_summary(
        R"({"summary":{"matched":2,"discarded":2,"skipped":0,"incomplete":"the store could not be read (busy): records past these were not looked at"}})",
        "discard");
    EXPECT_FALSE(inc->ok);
    EXPECT_NE(inc->text.find("incomplete: the store could not be read"), std::string::npos) << inc->text;
}

TEST(CtlRender, Config) {
    auto show = render_config_show(R"({"version":3,"config":{"listeners":[{"name":"agents","address":"127.0.0.1:8080"}],
      "routes":[],"admin":{"tokens":[]},"rules":[{"id":"r","match":{"methods":["POST","PUT"]}}]}})");
    ASSERT_TRUE(show);
    EXPECT_EQ(show->text,
              "version 3\n"
              "{\n"
              "  \"listeners\": [\n"
              "    {\n"
              "      \"name\": \"agents\",\n"
              "      \"address\": \"127.0.0.1:8080\"\n"
              "    }\n"
              "  ],\n"
              "  \"routes\": [],\n"
              "  \"admin\": {\n"
              "    \"tokens\": []\n"
              "  },\n"
              "  \"rules\": [\n"
              "    {\n"
              "      \"id\": \"r\",\n"
              "      \"match\": {\n"
              "        \"methods\": [\"POST\", \"PUT\"]\n"
              "      }\n"
              "    }\n"
              "  ]\n"
              "}\n");

    auto applied = render_config_change(R"({"version":7,"applied":true,"loosening":["raises the limit of rule r"],
      "diff":["rules[r].limit: 100 -> 200","rules: + s"]})");
    ASSERT_TRUE(applied);
    EXPECT_EQ(applied->text,
              "applied as version 7\n"
              "changes:\n"
              "  rules[r].limit: 100 -> 200\n"
              "  rules: + s\n"
              "loosens guards (needs the admin role):\n"
              "  raises the limit of rule r\n");
    auto warned = render_config_change(R"j({"version":8,"applied":true,"loosening":[],"diff":[],
      "still_enforcing":["b (open)"],"warnings":["store.path and store.group_commit are fixed until restart"]})j");
    ASSERT_TRUE(warned);
    EXPECT_EQ(warned->text,
              "applied as version 8\n"
              "no changes to rules or breakers\n"
              "still enforcing (not shadowed by metrics_only):\n"
              "  b (open)\n"
              "not applied:\n"
              "  store.path and store.group_commit are fixed until restart\n");
    auto dry = render_config_change(R"({"version":0,"applied":false,"loosening":[],"diff":[]})");
    EXPECT_EQ(dry->text, "dry run: nothing applied\nno changes to rules or breakers\n");
    // The config's own warnings are shown, and the apply is still a success.
    auto noted = render_config_change(R"j({"version":9,"applied":true,"loosening":[],"diff":[],
      "config_warnings":["upstreams[0].verify: false: the certificate of up is not verified"]})j");
    ASSERT_TRUE(noted);
    EXPECT_TRUE(noted->ok);
    EXPECT_EQ(noted->text,
              "applied as version 9\n"
              "no changes to rules or breakers\n"
              "warnings (applied all the same):\n"
              "  upstreams[0].verify: false: the certificate of up is not verified\n");
}

TEST(CtlRender, Audit) {
    auto r = render_audit(R"({"entries":[
      {"id":1,"at":1772366400000,"actor":"ops-oncall","role":"operator","method":"POST","path":"/v1/breakers/b/trip",
       "target":"b","params":"{}","reason":"drill\nline two","result":"ok","diff":"","prev_hash":"00","hash":"ab"},
      {"id":2,"at":1772366460000,"actor":"alice","role":"admin","method":"POST","path":"/v1/config","target":"config",
       "params":"{}","reason":"raise cap","result":"applied version 2","diff":"","prev_hash":"ab","hash":"cd"}]})");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->text,
              "ID  AT                    ACTOR       ROLE      ACTION                    TARGET  RESULT             REASON\n"
              "1   2026-03-01T12:00:00Z  ops-oncall  operator  POST /v1/breakers/b/trip  b       ok                 drill line two\n"
              "2   2026-03-01T12:01:00Z  alice       admin     POST /v1/config           config  applied version 2  raise cap\n");

    // A full page says where the next starts; the last page says nothing more.
    auto paged = render_audit(R"({"entries":[],"next_after":100})");
    EXPECT_EQ(paged->text, "no audit entries\nmore: breakerctl audit --after 100\n");
    auto last = render_audit(R"({"entries":[],"next_after":null})");
    EXPECT_EQ(last->text, "no audit entries\n");

    auto good = render_audit_verify(R"({"ok":true,"entries":42})");
    EXPECT_TRUE(good->ok);
    EXPECT_EQ(good->text, "audit log verified: 42 entries, hash chain intact\n");
    auto bad = render_audit_verify(R"({"ok":false,"entries":42,"first_bad":17,"problem":"hash does not match"})");
    EXPECT_FALSE(bad->ok);
    EXPECT_EQ(bad->text, "audit log does NOT verify: first bad entry 17: hash does not match (42 entries checked)\n");
}

TEST(CtlRender, ErrorMessages) {
    EXPECT_EQ(describe_transport_error("http://127.0.0.1:9901", "Connection refused"),
              "breakerctl: cannot reach the admin API at http://127.0.0.1:9901: Connection refused\n");
    EXPECT_EQ(describe_error_response(401, R"({"error":{"code":"unauthorized","message":"an Authorization: Bearer token is required"}})",
                                      "read breakers"),
              "breakerctl: unauthorized: set --token or BREAKERBOX_TOKEN (an Authorization: Bearer token is required)\n");
    EXPECT_EQ(describe_error_response(
                  403, R"j({"error":{"code":"forbidden","message":"role viewer cannot trip a breaker (needs operator)"}})j",
                  "trip a breaker"),
              "breakerctl: forbidden: your token's role cannot trip a breaker: role viewer cannot trip a breaker (needs operator)\n");
    EXPECT_EQ(describe_error_response(400, R"({"error":{"code":"missing_field","message":"every change needs a non-empty \"reason\"","field":"reason"}})",
                                      "trip a breaker"),
              "breakerctl: missing_field: every change needs a non-empty \"reason\" (field reason) [HTTP 400]\n");
    EXPECT_EQ(describe_error_response(400, R"({"error":{"code":"invalid_config","message":"2 error(s); the current config keeps serving"},
      "errors":["rules[3].window: \"1x\" is not a duration","routes[0].upstream: no upstream \"x\""]})",
                                      "change the config"),
              "breakerctl: invalid_config: 2 error(s); the current config keeps serving [HTTP 400]\n"
              "  rules[3].window: \"1x\" is not a duration\n"
              "  routes[0].upstream: no upstream \"x\"\n");
    EXPECT_EQ(describe_error_response(502, "<html>Bad Gateway</html>\nmore", "read breakers"),
              "breakerctl: the admin API answered HTTP 502: <html>Bad Gateway</html>\n");
}

}  // namespace
}  // namespace bb::ctl
