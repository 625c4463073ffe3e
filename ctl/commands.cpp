#include "ctl/commands.hpp"

#include "core/json_reader.hpp"
#include "ctl/render.hpp"

#include <simdjson.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>

namespace bb::ctl {

namespace {

struct flag_spec {
    std::string_view name;
    bool takes_value;
};

// Every flag breakerctl knows, global or not; which command accepts which is checked after.
constexpr flag_spec known_flags[] = {
    {"--admin", true},      {"--token", true},        {"--json", false},       {"--timeout", true},
    {"--cacert", true},     {"--help", false},        {"--reason", true},      {"--force", false},
    {"--dry-run", false},   {"--metrics-only", false}, {"--expires-in", true}, {"--breaker", true},
    {"--agent", true},      {"--rule", true},          {"--state", true},      {"--from", true},
    {"--to", true},         {"--limit", true},         {"--after", true},      {"--rate", true},
    {"--cert", true},       {"--key", true},           {"--base-version", true}, {"--attempts", true},
    {"--mode", true},
};

const std::set<std::string, std::less<>> global_flags = {"--admin", "--token", "--json", "--timeout", "--cacert",
                                                         "--cert",  "--key",   "--help"};

const flag_spec* find_flag(std::string_view name) {
    for (const auto& f : known_flags) {
        if (f.name == name) {
            return &f;
        }
    }
    return nullptr;
}

bool all_digits(std::string_view s) {
    return !s.empty() && s.size() <= 18 && s.find_first_not_of("0123456789") == std::string_view::npos;
}

bool blank(std::string_view s) { return s.find_first_not_of(" \t\r\n") == std::string_view::npos; }

std::string number_json(double d) {
    if (d == std::floor(d) && std::fabs(d) < 1e15) {
        return std::to_string(static_cast<std::int64_t>(d));
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", d);
    return buf;
}

// One command line, split into positionals and flags (each at most once: the admin API
// refuses a field given twice, and `--breaker a --breaker b` has no one meaning).
struct tokens {
    std::vector<std::string> positional;
    std::map<std::string, std::string, std::less<>> flags;
    bool has(std::string_view f) const { return flags.find(f) != flags.end(); }
    std::string get(std::string_view f) const {
        auto it = flags.find(f);
        return it == flags.end() ? std::string{} : it->second;
    }
};

class usage_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

tokens tokenize(const std::vector<std::string>& args) {
    tokens t;
    bool only_positional = false;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (only_positional || a == "-" || a.empty() || a[0] != '-') {
            t.positional.push_back(a);
            continue;
        }
        if (a == "--") {
            only_positional = true;
            continue;
        }
        if (a == "-h") {
            t.flags["--help"] = "";
            continue;
        }
        const auto eq = a.find('=');
        const std::string name = a.substr(0, eq);
        const auto* spec = find_flag(name);
        if (spec == nullptr) {
            throw usage_error("unknown flag " + name);
        }
        if (t.has(name)) {
            throw usage_error(name + " is given twice");
        }
        if (!spec->takes_value) {
            if (eq != std::string::npos) {
                throw usage_error(name + " takes no value");
            }
            t.flags[name] = "";
        } else if (eq != std::string::npos) {
            t.flags[name] = a.substr(eq + 1);
        } else if (i + 1 < args.size()) {
            // `--reason $R --json` with R unset: the next flag is no value (a value that
            // starts with -- is given as --reason=--text).
            if (args[i + 1].starts_with("--")) {
                throw usage_error(name + " needs a value, not the flag " + args[i + 1] + " (write " + name + "=" +
                                  args[i + 1] + " if that is the value)");
            }
            t.flags[name] = args[++i];
        } else {
            throw usage_error(name + " needs a value");
        }
    }
    return t;
}

// Checks the command's positionals and flags against what it accepts.
void expect(const tokens& t, std::string_view command, std::size_t words, std::size_t min_args, std::size_t max_args,
            std::initializer_list<std::string_view> allowed, std::string_view arg_names) {
    const std::size_t n = t.positional.size() - words;
    if (n < min_args) {
        throw usage_error(std::string{command} + " needs " + std::string{arg_names});
    }
    if (n > max_args) {
        throw usage_error("unexpected argument " + cfg::quote(t.positional[words + max_args]) + " for " +
                          std::string{command});
    }
    for (const auto& [name, value] : t.flags) {
        if (global_flags.count(name)) {
            continue;
        }
        bool ok = false;
        for (auto a : allowed) {
            ok = ok || a == name;
        }
        if (!ok) {
            throw usage_error(name + " does not apply to " + std::string{command});
        }
    }
}

std::string require_reason(const tokens& t, std::string_view command) {
    const std::string r = t.get("--reason");
    if (!t.has("--reason") || blank(r)) {
        throw usage_error(std::string{command} + " needs --reason TEXT (every change is audited)");
    }
    return r;
}

// A number as JSON writes it: `010` is no JSON number (the server would answer bad_json).
std::string json_number(std::string v) {
    v.erase(0, std::min(v.find_first_not_of('0'), v.size() - 1));
    return v;
}

std::string digits_flag(const tokens& t, std::string_view name, bool positive = false) {
    const std::string v = t.get(name);
    if (!all_digits(v) || (positive && std::strtoll(v.c_str(), nullptr, 10) == 0)) {
        throw usage_error(std::string{name} + " wants " + (positive ? "a positive whole number" : "milliseconds since the epoch") +
                          ", not " + cfg::quote(v));
    }
    return json_number(v);
}

// A page or bulk limit: 1 to 1000, as the server takes it (a larger one is refused there).
std::string limit_flag(const tokens& t) {
    std::string v = digits_flag(t, "--limit", true);
    if (v.size() > 4 || std::strtoll(v.c_str(), nullptr, 10) > 1000) {
        throw usage_error("--limit is 1 to 1000, not " + cfg::quote(t.get("--limit")));
    }
    return v;
}

bool is_mode(std::string_view m) {
    return m == "forced_open" || m == "forced_closed" || m == "metrics_only" || m == "auto";
}

const std::set<std::string, std::less<>> held_states = {"held",     "releasing", "released", "release_failed",
                                                         "discarded", "outcome_unknown"};

void check_state(const tokens& t) {
    if (t.has("--state") && !held_states.count(t.get("--state"))) {
        throw usage_error(cfg::quote(t.get("--state")) +
                          " is not a state (held, releasing, released, release_failed, discarded, outcome_unknown)");
    }
}

// A selector given empty (`--agent "$AGENT"` with AGENT unset) is refused, not sent: it would
// match any, and a bulk release or discard would act on every agent's held requests.
void refuse_empty(const tokens& t, std::initializer_list<std::string_view> keys) {
    for (auto k : keys) {
        const std::string flag = "--" + std::string{k};
        if (t.has(flag) && blank(t.get(flag))) {
            throw usage_error(flag + " is empty: give a value, or leave it out to match any");
        }
    }
}

// The quarantine filter as a JSON object (bulk release/discard); "" when no selector is given.
std::string filter_json(const tokens& t) {
    refuse_empty(t, {"breaker", "agent", "rule", "state"});
    std::string o;
    auto add = [&](std::string_view key, std::string value_json) {
        o += (o.empty() ? "{" : ",") + cfg::quote(key) + ":" + value_json;
    };
    for (std::string_view k : {"breaker", "agent", "rule", "state"}) {
        const std::string flag = "--" + std::string{k};
        if (t.has(flag)) {
            add(k, cfg::quote(t.get(flag)));
        }
    }
    for (std::string_view k : {"from", "to"}) {
        const std::string flag = "--" + std::string{k};
        if (t.has(flag)) {
            add(k, digits_flag(t, flag));
        }
    }
    // At most that many acted on (a canary release of one); the server bounds it (1 to 1000).
    if (t.has("--limit")) {
        add("limit", limit_flag(t));
    }
    return o.empty() ? o : o + "}";
}

std::string list_query(const tokens& t, std::initializer_list<std::string_view> keys) {
    refuse_empty(t, keys);
    std::string q;
    for (auto k : keys) {
        const std::string flag = "--" + std::string{k};
        if (t.has(flag)) {
            q += (q.empty() ? "?" : "&") + std::string{k} + "=" + encode_component(t.get(flag));
        }
    }
    return q;
}

http_request get(std::string target) { return http_request{"GET", std::move(target), {}}; }
http_request post(std::string target, std::string body) {
    return http_request{"POST", std::move(target), std::move(body)};
}

void build(plan& p, const tokens& t) {
    const auto& w = t.positional;
    if (w.empty()) {
        throw usage_error("missing command");
    }
    const std::string& cmd = w[0];
    p.command = cmd;
    if (cmd == "health") {
        expect(t, cmd, 1, 0, 0, {}, "");
        p.kind = view::health;
        p.action = "read health";
        p.requests = {get("/healthz"), get("/readyz")};
    } else if (cmd == "metrics") {
        expect(t, cmd, 1, 0, 0, {}, "");
        if (t.has("--json")) {
            throw usage_error("metrics are Prometheus text: --json does not apply");
        }
        p.kind = view::metrics;
        p.action = "read metrics";
        p.requests = {get("/metrics")};
    } else if (cmd == "breakers") {
        expect(t, cmd, 1, 0, 0, {"--breaker", "--state", "--mode", "--limit", "--after"}, "");
        if (t.has("--state") && t.get("--state") != "closed" && t.get("--state") != "open" &&
            t.get("--state") != "half_open") {
            throw usage_error(cfg::quote(t.get("--state")) + " is not a breaker state (closed, open, half_open)");
        }
        if (t.has("--mode") && !is_mode(t.get("--mode"))) {
            throw usage_error(cfg::quote(t.get("--mode")) + " is not a mode (forced_open, forced_closed, metrics_only, auto)");
        }
        if (t.has("--limit")) {
            limit_flag(t);
        }
        p.kind = view::breakers;
        p.action = "read breakers";
        p.requests = {get("/v1/breakers" + list_query(t, {"breaker", "state", "mode", "limit", "after"}))};
    } else if (cmd == "breaker") {
        expect(t, cmd, 1, 1, 1, {}, "a breaker instance ID");
        p.kind = view::breaker;
        p.action = "read breakers";
        p.requests = {get("/v1/breakers/" + encode_component(w[1]))};
    } else if (cmd == "trip" || cmd == "reset") {
        expect(t, cmd, 1, 1, 1, {"--reason"}, "a breaker instance ID");
        p.reason = require_reason(t, cmd);
        p.kind = view::breaker;
        p.action = cmd + " a breaker";
        p.requests = {post("/v1/breakers/" + encode_component(w[1]) + "/" + cmd,
                           "{\"reason\":" + cfg::quote(p.reason) + "}")};
    } else if (cmd == "mode") {
        expect(t, cmd, 1, 2, 2, {"--reason", "--expires-in"},
               "a breaker instance ID and a mode (forced_open, forced_closed, metrics_only, auto)");
        const std::string& mode = w[2];
        if (!is_mode(mode)) {
            throw usage_error(cfg::quote(mode) + " is not a mode (forced_open, forced_closed, metrics_only, auto)");
        }
        std::string body = "{\"mode\":" + cfg::quote(mode);
        if (t.has("--expires-in")) {
            if (mode == "auto") {
                throw usage_error("--expires-in applies to forced_open, forced_closed and metrics_only, not auto");
            }
            const auto d = cfg::parse_duration(t.get("--expires-in"));
            if (!d || d->count() <= 0) {
                throw usage_error("--expires-in wants a duration like 10m, not " + cfg::quote(t.get("--expires-in")));
            }
            body += ",\"expires_in\":" + cfg::quote(t.get("--expires-in"));
        }
        p.reason = require_reason(t, cmd);
        body += ",\"reason\":" + cfg::quote(p.reason) + "}";
        p.kind = view::breaker;
        p.action = "change a breaker's mode";
        p.requests = {post("/v1/breakers/" + encode_component(w[1]) + "/mode", std::move(body))};
    } else if (cmd == "quarantine") {
        if (w.size() < 2) {
            throw usage_error("quarantine needs list, show, release or discard");
        }
        const std::string& sub = w[1];
        p.command = "quarantine " + sub;
        if (sub == "list") {
            expect(t, p.command, 2, 0, 0,
                   {"--breaker", "--agent", "--rule", "--state", "--from", "--to", "--limit", "--after"}, "");
            check_state(t);
            for (std::string_view k : {"--from", "--to"}) {
                if (t.has(k)) {
                    digits_flag(t, k);
                }
            }
            if (t.has("--limit")) {
                limit_flag(t);
            }
            p.kind = view::quarantine_list;
            p.action = "read quarantined requests";
            p.requests = {get("/v1/quarantine" +
                              list_query(t, {"breaker", "agent", "rule", "state", "from", "to", "limit", "after"}))};
        } else if (sub == "show") {
            expect(t, p.command, 2, 1, 1, {}, "a TICKET");
            p.kind = view::quarantine_show;
            p.action = "read quarantined requests";
            p.requests = {get("/v1/quarantine/" + encode_component(w[2]))};
        } else if (sub == "release" || sub == "discard") {
            p.verb = sub;
            p.action = sub + " quarantined requests";
            const bool by_ticket = w.size() > 2;
            if (by_ticket) {
                expect(t, p.command, 2, 1, 1,
                       sub == "release" ? std::initializer_list<std::string_view>{"--reason", "--force", "--attempts"}
                                        : std::initializer_list<std::string_view>{"--reason"},
                       "a TICKET");
                p.reason = require_reason(t, p.command);
                std::string body = "{\"reason\":" + cfg::quote(p.reason);
                if (sub == "release") {
                    // A force names the attempts the operator saw (`quarantine show`): the
                    // server refuses it if another release ran since, so two operators
                    // cannot both re-send a request of unknown outcome.
                    if (t.has("--force") != t.has("--attempts")) {
                        throw usage_error("--force needs --attempts N (the release attempts `quarantine show` "
                                          "printed), and --attempts is only for --force");
                    }
                    body += std::string{",\"force\":"} + (t.has("--force") ? "true" : "false");
                    if (t.has("--attempts")) {
                        const std::string n = t.get("--attempts");
                        if (!all_digits(n) || n.size() > 9) {
                            throw usage_error("--attempts wants a whole number, not " + cfg::quote(n));
                        }
                        body += ",\"attempts\":" + json_number(n);
                    }
                }
                p.kind = view::quarantine_result;
                p.requests = {post("/v1/quarantine/" + encode_component(w[2]) + "/" + sub, body + "}")};
            } else {
                expect(t, p.command, 2, 0, 0,
                       sub == "release"
                           ? std::initializer_list<std::string_view>{"--reason", "--rate", "--breaker", "--agent",
                                                                     "--rule", "--state", "--from", "--to", "--limit"}
                           : std::initializer_list<std::string_view>{"--reason", "--breaker", "--agent", "--rule",
                                                                     "--state", "--from", "--to", "--limit"},
                       "");
                check_state(t);
                if (!t.has("--breaker") && !t.has("--agent") && !t.has("--rule") && !t.has("--from") &&
                    !t.has("--to")) {
                    throw usage_error(p.command +
                                      " needs a TICKET, or a filter: --breaker, --agent, --rule, --from or --to");
                }
                const std::string filter = filter_json(t);
                p.reason = require_reason(t, p.command);
                std::string body = "{\"reason\":" + cfg::quote(p.reason);
                if (t.has("--rate")) {
                    const std::string r = t.get("--rate");
                    char* end = nullptr;
                    const double rate = std::strtod(r.c_str(), &end);
                    if (r.empty() || end != r.c_str() + r.size() || !std::isfinite(rate) || rate <= 0) {
                        throw usage_error("--rate wants requests per second (a positive number), not " + cfg::quote(r));
                    }
                    body += ",\"rate_per_s\":" + number_json(rate);
                }
                body += ",\"filter\":" + filter + "}";
                p.kind = view::quarantine_summary;
                p.requests = {post("/v1/quarantine/" + sub, std::move(body))};
            }
        } else {
            throw usage_error("unknown subcommand quarantine " + cfg::quote(sub));
        }
    } else if (cmd == "config") {
        if (w.size() < 2) {
            throw usage_error("config needs show, apply, reload or rollback");
        }
        const std::string& sub = w[1];
        p.command = "config " + sub;
        if (sub == "show") {
            expect(t, p.command, 2, 0, 0, {}, "");
            p.kind = view::config_show;
            p.action = "read the config";
            p.requests = {get("/v1/config")};
        } else if (sub == "apply") {
            expect(t, p.command, 2, 1, 1, {"--reason", "--dry-run", "--metrics-only", "--base-version"},
                   "a FILE (or - for stdin)");
            p.reason = require_reason(t, p.command);
            p.metrics_only = t.has("--metrics-only");
            if (t.has("--base-version")) {
                // The version `config show` printed when the file was made from it: the change
                // is refused (409) if another one was applied meanwhile, instead of undoing it.
                const std::string& v = t.get("--base-version");
                if (!all_digits(v) || v.size() > 18) {
                    throw usage_error("--base-version is a version number (0: none stored yet), not " + cfg::quote(v));
                }
                p.base_version = std::strtoll(v.c_str(), nullptr, 10);
            }
            p.config_file = w[2];
            p.kind = view::config_change;
            p.action = "change the config";
            // The body is made from the file at execution (config_apply_body).
            p.requests = {post(t.has("--dry-run") ? "/v1/config?dry_run=1" : "/v1/config", {})};
        } else if (sub == "reload") {
            expect(t, p.command, 2, 0, 0, {"--reason"}, "");
            p.reason = require_reason(t, p.command);
            p.kind = view::config_change;
            p.action = "reload the config";
            p.requests = {post("/v1/config/reload", "{\"reason\":" + cfg::quote(p.reason) + "}")};
        } else if (sub == "rollback") {
            expect(t, p.command, 2, 1, 1, {"--reason"}, "a VERSION");
            if (!all_digits(w[2]) || std::strtoll(w[2].c_str(), nullptr, 10) == 0) {
                throw usage_error("VERSION is a positive whole number, not " + cfg::quote(w[2]));
            }
            p.reason = require_reason(t, p.command);
            p.kind = view::config_change;
            p.action = "roll the config back";
            p.requests = {post("/v1/config/rollback", "{\"version\":" + std::to_string(std::strtoll(w[2].c_str(), nullptr, 10)) +
                                                          ",\"reason\":" + cfg::quote(p.reason) + "}")};
        } else {
            throw usage_error("unknown subcommand config " + cfg::quote(sub));
        }
    } else if (cmd == "audit") {
        if (w.size() >= 2 && w[1] == "verify") {
            p.command = "audit verify";
            expect(t, p.command, 2, 0, 0, {}, "");
            p.kind = view::audit_verify;
            p.action = "verify the audit log";
            p.requests = {get("/v1/audit/verify")};
        } else {
            expect(t, cmd, 1, 0, 0, {"--limit", "--after"}, "");
            if (t.has("--limit")) {
                limit_flag(t);
            }
            if (t.has("--after")) {
                digits_flag(t, "--after");
            }
            p.kind = view::audit;
            p.action = "read the audit log";
            p.requests = {get("/v1/audit" + list_query(t, {"limit", "after"}))};
        }
    } else {
        throw usage_error("unknown command " + cfg::quote(cmd));
    }
}

std::string with_newline(std::string s) {
    if (s.empty() || s.back() != '\n') {
        s += '\n';
    }
    return s;
}

bool is_json(std::string_view s) {
    simdjson::dom::parser p;
    return !p.parse(s.data(), s.size()).error();
}

std::optional<std::string> read_file(const std::string& path, std::string* why) {
    if (path == "-") {
        return std::string{std::istreambuf_iterator<char>{std::cin}, std::istreambuf_iterator<char>{}};
    }
    std::ifstream in{path, std::ios::binary};
    if (!in) {
        *why = "cannot read " + path + ": " + std::strerror(errno);
        return std::nullopt;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::optional<rendered> render(const plan& p, std::string_view body) {
    switch (p.kind) {
    case view::metrics:
        return rendered{std::string{body}, true, {}};
    case view::breakers:
        return render_breakers(body);
    case view::breaker:
        return render_breaker(body);
    case view::quarantine_list:
        return render_quarantine_list(body);
    case view::quarantine_show:
        return render_quarantine_show(body);
    case view::quarantine_result:
        return render_quarantine_result(body, p.verb);
    case view::quarantine_summary:
        return render_quarantine_summary(body, p.verb);
    case view::config_show:
        return render_config_show(body);
    case view::config_change:
        return render_config_change(body);
    case view::audit:
        return render_audit(body);
    case view::audit_verify:
        return render_audit_verify(body);
    case view::health:
        break;
    }
    return std::nullopt;
}

}  // namespace

std::string usage() {
    return R"(usage: breakerctl [global options] COMMAND [arguments]

global options (anywhere on the line):
  --admin URL       admin API (default: $BREAKERBOX_ADMIN, else http://127.0.0.1:9901)
  --token T         bearer token (default: $BREAKERBOX_TOKEN)
  --json            print the API's JSON answer instead of tables
  --timeout D       overall deadline per request (default 10s; 1h for quarantine release and discard)
  --cacert FILE     CA certificates (PEM) for an https admin URL
  --cert FILE       client certificate (PEM) for an admin API that maps mTLS clients to operators
  --key FILE        the client certificate's private key (PEM; default: in --cert)
  -h, --help        this help

commands:
  health                                   liveness and readiness
  metrics                                  Prometheus metrics
  breakers [--breaker B] [--state closed|open|half_open] [--mode MODE] [--limit N] [--after INSTANCE]
                                           breaker instances (name order, pages of 1000)
  breaker ID                               one breaker instance
  trip ID --reason R                       trip a breaker by hand
  reset ID --reason R                      close a breaker
  mode ID forced_open|forced_closed|metrics_only|auto [--expires-in 10m] --reason R
  quarantine list [--breaker B] [--agent A] [--rule R] [--state S] [--from MS] [--to MS]
                  [--limit N] [--after TICKET]
  quarantine show TICKET
  quarantine release TICKET --reason R [--force --attempts N]
  quarantine release --breaker B|--agent A|--rule R|--from MS|--to MS [--state S] [--rate N]
                     [--limit N] --reason R      --limit 1: a canary
  quarantine discard TICKET --reason R
  quarantine discard --breaker B|--agent A|--rule R|--from MS|--to MS [--state S] [--limit N]
                     --reason R
  config show
  config apply FILE|- [--dry-run] [--metrics-only] [--base-version N] --reason R
                                           N: the version `config show` printed; refused
                                           if another change was applied since
  config reload --reason R
  config rollback VERSION --reason R
  audit [--limit N] [--after ID]
  audit verify

exit status: 0 ok, 1 refused or failed, 2 usage error
)";
}

parse_result parse_args(const std::vector<std::string>& args, const environment& env) {
    parse_result r;
    try {
        const tokens t = tokenize(args);
        if (t.has("--help") || (!t.positional.empty() && t.positional[0] == "help")) {
            r.help = true;
            return r;
        }
        plan p;
        const std::string admin = t.has("--admin") ? t.get("--admin") : env.admin.value_or(std::string{default_admin_url});
        std::string why;
        auto url = parse_admin_url(admin, &why);
        if (!url) {
            throw usage_error(why);
        }
        p.client.url = *url;
        p.client.token = t.has("--token") ? t.get("--token") : env.token.value_or("");
        p.client.cacert = t.get("--cacert");
        p.client.cert = t.get("--cert");
        p.client.key = t.get("--key");
        // Silently unused, a client certificate would leave the operator blaming the token.
        for (const char* flag : {"--cacert", "--cert", "--key"}) {
            if (t.has(flag) && !p.client.url.tls()) {
                throw usage_error(std::string{flag} + " applies to an https:// admin URL, not " + cfg::quote(admin));
            }
        }
        if (t.has("--key") && !t.has("--cert")) {
            throw usage_error("--key needs --cert (the client certificate it belongs to)");
        }
        if (t.has("--timeout")) {
            const auto d = cfg::parse_duration(t.get("--timeout"));
            if (!d || d->count() <= 0 || *d > cfg::max_duration) {
                throw usage_error("--timeout wants a duration like 10s, not " + cfg::quote(t.get("--timeout")));
            }
            p.client.timeout = *d;
        }
        p.json = t.has("--json");
        build(p, t);
        if (!t.has("--timeout") && (p.kind == view::quarantine_result || p.kind == view::quarantine_summary)) {
            // A release answers once the upstream has (up to its route timeout), a paced bulk
            // release once every record went: 10 s would give up on a release still running.
            p.client.timeout = std::chrono::hours{1};
        }
        r.p = std::move(p);
    } catch (const usage_error& e) {
        r.error = e.what();
    }
    return r;
}

std::optional<std::string> config_apply_body(std::string_view file_text, std::string_view reason, bool metrics_only,
                                             std::string* why, std::optional<std::int64_t> base_version) {
    simdjson::dom::parser parser;
    auto doc = parser.parse(file_text.data(), file_text.size());
    if (doc.error()) {
        *why = std::string{"not valid JSON: "} + simdjson::error_message(doc.error());
        return std::nullopt;
    }
    if (doc.value_unsafe().type() != simdjson::dom::element_type::OBJECT) {
        *why = "the config must be a JSON object";
        return std::nullopt;
    }
    return "{\"config\":" + simdjson::minify(doc.value_unsafe()) + ",\"reason\":" + cfg::quote(reason) +
           ",\"metrics_only\":" + (metrics_only ? "true" : "false") +
           (base_version ? ",\"base_version\":" + std::to_string(*base_version) : std::string{}) + "}";
}

transport network_transport(const client_options& opts) {
    return [opts](const http_request& req) { return send(opts, req); };
}

int execute(plan& p, const transport& t, std::ostream& out, std::ostream& err) {
    if (!p.config_file.empty()) {
        std::string why;
        auto text = read_file(p.config_file, &why);
        std::optional<std::string> body;
        if (text) {
            body = config_apply_body(*text, p.reason, p.metrics_only, &why, p.base_version);
            if (!body) {
                why = p.config_file + ": " + why;
            }
        }
        if (!body) {
            err << "breakerctl: " << why << "\n";
            return exit_failed;
        }
        p.requests.at(0).body = std::move(*body);
    }
    std::vector<http_response> answers;
    for (const auto& req : p.requests) {
        auto r = t(req);
        if (!r.ok()) {
            err << describe_transport_error(p.client.url.to_string(), r.transport_error);
            if (p.kind == view::quarantine_result || p.kind == view::quarantine_summary) {
                // Maybe sent and acted on (a timeout, a reset while waiting): the server goes
                // on without us.
                err << "breakerctl: the admin API may still be acting on it (a release goes on once asked): look with "
                       "`breakerctl quarantine show TICKET` or `quarantine list` before asking again\n";
            }
            return exit_failed;
        }
        answers.push_back(std::move(*r.response));
    }
    if (p.kind == view::health) {
        const auto& h = answers.at(0);
        const auto& r = answers.at(1);
        auto rendered = render_health(h.status, h.body, r.status, r.body);
        if (p.json) {
            auto doc = [](const std::string& b) {
                std::string s = b;
                while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) {
                    s.pop_back();
                }
                return is_json(s) ? s : cfg::quote(s);
            };
            out << "{\"healthz\":" << doc(h.body) << ",\"readyz\":" << doc(r.body) << "}\n";
        } else {
            out << printable_text(rendered->text);
        }
        return rendered->ok ? exit_ok : exit_failed;
    }
    const auto& a = answers.at(0);
    if (a.status < 200 || a.status >= 300) {
        if (p.json && is_json(a.body)) {
            out << with_newline(a.body);
        }
        err << printable_text(describe_error_response(a.status, a.body, p.action));
        return exit_failed;
    }
    // The act was taken, but its outcome is missing from the audit log: said on stderr (the
    // table would not show the field, and the exit code stays what the act was).
    if (a.body.find("\"audit_unrecorded\":") != std::string::npos) {
        err << "breakerctl: warning: the action was taken, but its outcome could not be written to the audit log "
               "(see the server's log)\n";
    }
    // A 2xx that is not the admin API's JSON (a login page of a proxy in front of it): the
    // act may not have reached breakerbox at all, so nothing is printed as if it had.
    if (p.kind != view::metrics && !is_json(a.body)) {
        err << "breakerctl: the admin API answered HTTP " << a.status
            << " with a body that is not JSON (is something else answering at " << p.client.url.to_string()
            << "?): " << first_line_printable(a.body) << "\n";
        return exit_failed;
    }
    auto r = render(p, a.body);
    if (p.json) {
        out << with_newline(a.body);
    } else if (r) {
        out << printable_text(r->text);
    } else {
        // JSON of a shape this breakerctl does not know (a newer server?): show it rather
        // than guess.
        out << printable_text(with_newline(a.body));
    }
    if (r && !r->ok && !r->failure.empty()) {
        err << "breakerctl: " << r->failure << "\n";
    }
    // An act (a POST) whose answer does not say what was done (`200 {}` from a gateway in
    // front, a server of another version) is not reported as done: a script must not carry
    // on as if a release or a trip happened. A read shown as it came is fine.
    if (!r && !p.requests.empty() && p.requests.front().method == "POST") {
        err << "breakerctl: the admin API answered HTTP " << a.status << " without the result " << p.command
            << " expects; whether it was done is not known: check with a list or get\n";
        return exit_failed;
    }
    return !r || r->ok ? exit_ok : exit_failed;
}

int run(const std::vector<std::string>& args, const environment& env, std::ostream& out, std::ostream& err,
        const transport_factory& make_transport) {
    auto parsed = parse_args(args, env);
    if (parsed.help) {
        out << usage();
        return exit_ok;
    }
    if (!parsed.p) {
        err << "breakerctl: " << parsed.error << "\n\n" << usage();
        return exit_usage;
    }
    auto t = make_transport(parsed.p->client);
    return execute(*parsed.p, t, out, err);
}

}  // namespace bb::ctl
