#include "ctl/render.hpp"

#include "core/json_reader.hpp"
#include "core/utf8.hpp"

#include <simdjson.h>

#include <chrono>
#include <cmath>
#include <cstdio>

namespace bb::ctl {

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

std::optional<element> parse(simdjson::dom::parser& p, std::string_view body) {
    auto r = p.parse(body.data(), body.size());
    if (r.error()) {
        return std::nullopt;
    }
    return r.value_unsafe();
}

std::optional<element> member(element e, std::string_view key) {
    element v;
    if (e.type() != element_type::OBJECT || e[key].get(v) != simdjson::SUCCESS) {
        return std::nullopt;
    }
    return v;
}

std::optional<element> object_member(element e, std::string_view key) {
    auto v = member(e, key);
    if (!v || v->type() != element_type::OBJECT) {
        return std::nullopt;
    }
    return v;
}

std::optional<simdjson::dom::array> array_member(element e, std::string_view key) {
    auto v = member(e, key);
    simdjson::dom::array a;
    if (!v || v->get(a) != simdjson::SUCCESS) {
        return std::nullopt;
    }
    return a;
}

std::string number_text(double d) {
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15) {
        return std::to_string(static_cast<std::int64_t>(d));
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", d);
    return buf;
}

// A scalar as an operator reads it; `dash` for null, missing or empty.
std::string scalar_text(std::optional<element> v, std::string_view dash = "-") {
    if (!v) {
        return std::string{dash};
    }
    switch (v->type()) {
    case element_type::STRING: {
        std::string_view s = v->get_string().value_unsafe();
        return s.empty() ? std::string{dash} : printable(s);
    }
    case element_type::INT64:
        return std::to_string(v->get_int64().value_unsafe());
    case element_type::UINT64:
        return std::to_string(v->get_uint64().value_unsafe());
    case element_type::DOUBLE:
        return number_text(v->get_double().value_unsafe());
    case element_type::BOOL:
        return v->get_bool().value_unsafe() ? "true" : "false";
    case element_type::NULL_VALUE:
        return std::string{dash};
    default:
        return printable(simdjson::minify(*v));
    }
}

std::string field(element e, std::string_view key, std::string_view dash = "-") {
    return scalar_text(member(e, key), dash);
}

std::optional<std::int64_t> integer_field(element e, std::string_view key) {
    auto v = member(e, key);
    if (!v) {
        return std::nullopt;
    }
    std::int64_t n = 0;
    if (v->get(n) == simdjson::SUCCESS) {
        return n;
    }
    double d = 0;
    if (v->get(d) == simdjson::SUCCESS && std::isfinite(d)) {
        return static_cast<std::int64_t>(d);
    }
    return std::nullopt;
}

std::string time_field(element e, std::string_view key) {
    auto ms = integer_field(e, key);
    return ms ? iso8601(*ms) : "-";
}

bool bool_field(element e, std::string_view key, bool otherwise = false) {
    auto v = member(e, key);
    bool b = otherwise;
    if (v && v->get(b) != simdjson::SUCCESS) {
        return otherwise;
    }
    return b;
}

std::size_t code_points(std::string_view s) {
    std::size_t n = 0;
    for (unsigned char c : s) {
        n += (c & 0xC0) != 0x80;
    }
    return n;
}

// "key:   value" lines with the values aligned.
class details {
public:
    void add(std::string key, std::string value) { lines_.emplace_back(std::move(key), std::move(value)); }
    std::string to_string() const {
        std::size_t w = 0;
        for (const auto& [k, v] : lines_) {
            w = std::max(w, k.size());
        }
        std::string o;
        for (const auto& [k, v] : lines_) {
            o += k + ":" + std::string(w - k.size() + 2, ' ') + v + "\n";
        }
        return o;
    }

private:
    std::vector<std::pair<std::string, std::string>> lines_;
};

std::string duration_text(std::optional<std::int64_t> ms) {
    return ms ? cfg::format_duration(std::chrono::milliseconds{*ms}) : "-";
}

std::string last_trip_summary(element b) {
    auto t = object_member(b, "last_trip");
    if (!t) {
        return "-";
    }
    const std::string rule = field(*t, "rule", "");
    std::string o = time_field(*t, "at") + " " + (rule.empty() ? field(*t, "kind") : "rule " + rule);
    if (auto actor = field(*t, "actor", ""); !actor.empty()) {
        o += " by " + actor;
    }
    return o;
}

void breaker_details(element b, details& d) {
    d.add("instance", field(b, "instance"));
    d.add("breaker", field(b, "breaker"));
    d.add("key", field(b, "key"));
    d.add("action", field(b, "action"));
    std::string state = field(b, "state");
    if (auto at = integer_field(b, "opened_at")) {
        state += " since " + iso8601(*at);
    }
    d.add("state", state);
    std::string mode = field(b, "mode");
    if (auto until = integer_field(b, "mode_expires_at")) {
        mode += " until " + iso8601(*until);
    }
    d.add("mode", mode);
    d.add("cooldown", duration_text(integer_field(b, "cooldown_ms")));
    d.add("trips", field(b, "trips"));
    auto t = object_member(b, "last_trip");
    if (!t) {
        d.add("last trip", "-");
        return;
    }
    d.add("last trip", time_field(*t, "at") + " (" + field(*t, "kind") + ")");
    if (auto rule = field(*t, "rule", ""); !rule.empty()) {
        std::string what = rule;
        if (auto key = field(*t, "key", ""); !key.empty()) {
            what += " key " + key;
        }
        what += ": " + field(*t, "value") + " against a limit of " + field(*t, "limit");
        if (auto w = integer_field(*t, "window_ms"); w && *w > 0) {
            what += " per " + duration_text(w);
        }
        d.add("  rule", what);
    }
    if (auto actor = field(*t, "actor", ""); !actor.empty()) {
        d.add("  by", actor);
    }
    if (auto reason = field(*t, "reason", ""); !reason.empty()) {
        d.add("  reason", reason);
    }
    if (auto rid = field(*t, "request_id", ""); !rid.empty()) {
        d.add("  request", rid);
    }
}

void pretty(element e, std::size_t indent, std::string& o) {
    const std::string pad(indent, ' ');
    const std::string inner(indent + 2, ' ');
    switch (e.type()) {
    case element_type::OBJECT: {
        simdjson::dom::object obj = e.get_object().value_unsafe();
        if (obj.size() == 0) {
            o += "{}";
            return;
        }
        o += "{\n";
        bool first = true;
        for (auto [k, v] : obj) {
            o += first ? "" : ",\n";
            first = false;
            o += inner + cfg::quote(k) + ": ";
            pretty(v, indent + 2, o);
        }
        o += "\n" + pad + "}";
        return;
    }
    case element_type::ARRAY: {
        simdjson::dom::array arr = e.get_array().value_unsafe();
        if (arr.size() == 0) {
            o += "[]";
            return;
        }
        // Short arrays of scalars stay on one line: ["POST"], [1, 2, 3].
        bool scalars = true;
        std::string flat = "[";
        for (auto v : arr) {
            if (v.type() == element_type::OBJECT || v.type() == element_type::ARRAY) {
                scalars = false;
                break;
            }
            flat += (flat.size() > 1 ? ", " : "") + simdjson::minify(v);
        }
        if (scalars && flat.size() + indent < 100) {
            o += flat + "]";
            return;
        }
        o += "[\n";
        bool first = true;
        for (auto v : arr) {
            o += first ? "" : ",\n";
            first = false;
            o += inner;
            pretty(v, indent + 2, o);
        }
        o += "\n" + pad + "]";
        return;
    }
    default:
        o += simdjson::minify(e);
    }
}

}  // namespace

std::string iso8601(std::int64_t ms) {
    using namespace std::chrono;
    const sys_time<milliseconds> tp{milliseconds{ms}};
    const auto day = floor<days>(tp);
    const year_month_day ymd{day};
    const hh_mm_ss hms{tp - day};
    char buf[48];
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d", static_cast<int>(ymd.year()),
                  static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                  static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                  static_cast<int>(hms.seconds().count()));
    std::string o = buf;
    if (const auto frac = hms.subseconds().count(); frac != 0) {
        std::snprintf(buf, sizeof buf, ".%03d", static_cast<int>(frac));
        o += buf;
    }
    return o + "Z";
}

namespace {

std::string printable_keeping(std::string_view s, bool newlines) {
    std::string o;
    o.reserve(s.size());
    for (std::size_t i = 0, n = 0; i < s.size(); i += n) {
        if (!display_unsafe(s, i, &n)) {
            o.append(s, i, n);
        } else if (newlines && s[i] == '\n') {
            o += '\n';
        } else {
            // A control byte keeps a table's columns (one column wide); the rest shows that
            // something was there.
            o += static_cast<unsigned char>(s[i]) < 0x80 ? ' ' : '?';
        }
    }
    return o;
}

}  // namespace

std::string printable(std::string_view s) { return printable_keeping(s, false); }

std::string printable_text(std::string_view s) { return printable_keeping(s, true); }

table::table(std::vector<std::string> header) : header_(std::move(header)) {}

void table::add(std::vector<std::string> row) {
    row.resize(header_.size());
    for (auto& cell : row) {
        cell = printable(cell);
    }
    rows_.push_back(std::move(row));
}

std::string table::to_string() const {
    std::vector<std::size_t> width(header_.size());
    for (std::size_t c = 0; c < header_.size(); ++c) {
        width[c] = code_points(header_[c]);
        for (const auto& r : rows_) {
            width[c] = std::max(width[c], code_points(r[c]));
        }
    }
    std::string o;
    auto line = [&](const std::vector<std::string>& cells) {
        std::string l;
        for (std::size_t c = 0; c < cells.size(); ++c) {
            l += cells[c];
            if (c + 1 < cells.size()) {
                l += std::string(width[c] - code_points(cells[c]) + 2, ' ');
            }
        }
        while (!l.empty() && l.back() == ' ') {
            l.pop_back();
        }
        o += l + "\n";
    };
    line(header_);
    for (const auto& r : rows_) {
        line(r);
    }
    return o;
}

std::optional<rendered> render_health(unsigned healthz_status, std::string_view healthz_body, unsigned readyz_status,
                                      std::string_view readyz_body) {
    simdjson::dom::parser p1;
    simdjson::dom::parser p2;
    auto h = parse(p1, healthz_body);
    auto r = parse(p2, readyz_body);
    auto status = [](std::optional<element> e, unsigned code) {
        std::string s = e ? field(*e, "status", "?") : std::string{"?"};
        return s + (code == 200 ? "" : " (HTTP " + std::to_string(code) + ")");
    };
    rendered out;
    out.text = "healthz: " + status(h, healthz_status) + "\nreadyz:  " + status(r, readyz_status) + "\n";
    out.ok = healthz_status == 200 && readyz_status == 200;
    return out;
}

std::optional<rendered> render_breakers(std::string_view body) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    auto list = doc ? array_member(*doc, "breakers") : std::nullopt;
    if (!list) {
        return std::nullopt;
    }
    table t{{"INSTANCE", "STATE", "MODE", "TRIPS", "LAST-TRIP"}};
    for (auto b : *list) {
        std::string mode = field(b, "mode");
        if (integer_field(b, "mode_expires_at")) {
            mode += "*";
        }
        t.add({field(b, "instance"), field(b, "state"), mode, field(b, "trips"), last_trip_summary(b)});
    }
    rendered out;
    if (t.rows() == 0) {
        out.text = "no breaker instances match\n";
        return out;
    }
    out.text = t.to_string();
    bool expiring = false;
    for (auto b : *list) {
        expiring = expiring || integer_field(b, "mode_expires_at").has_value();
    }
    if (expiring) {
        out.text += "* the mode expires; see breakerctl breaker INSTANCE\n";
    }
    if (auto total = integer_field(*doc, "total"); total && *total > static_cast<std::int64_t>(t.rows())) {
        out.text += "showing " + std::to_string(t.rows()) + " of " + std::to_string(*total) + " instances\n";
    }
    if (auto next = field(*doc, "next_after", ""); !next.empty()) {
        out.text += "more: add --after " + next + "\n";
    }
    return out;
}

std::optional<rendered> render_breaker(std::string_view body) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    auto b = doc ? object_member(*doc, "breaker") : std::nullopt;
    if (!b) {
        // `"breaker": null`: an instance that is not in memory (a reset or a mode of auto
        // on a key that is closed, after a restart): nothing to do, done.
        if (const auto v = doc ? member(*doc, "breaker") : std::nullopt; v && v->is_null()) {
            return rendered{"closed: no instance of it is open (nothing to change)\n", true, {}};
        }
        return std::nullopt;
    }
    details d;
    breaker_details(*b, d);
    return rendered{d.to_string(), true, {}};
}

std::optional<rendered> render_quarantine_list(std::string_view body) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    auto list = doc ? array_member(*doc, "requests") : std::nullopt;
    if (!list) {
        return std::nullopt;
    }
    table t{{"TICKET", "STATE", "RECEIVED", "METHOD", "TARGET", "BREAKER", "RULE", "AGENT", "BYTES"}};
    for (auto h : *list) {
        t.add({field(h, "ticket"), field(h, "state"), time_field(h, "received_at"), field(h, "method"),
               field(h, "target"), field(h, "breaker_instance"), field(h, "rule"), field(h, "agent"),
               field(h, "body_bytes")});
    }
    rendered out;
    out.text = t.rows() == 0 ? "no quarantined requests match\n" : t.to_string();
    if (auto next = field(*doc, "next_after", ""); !next.empty()) {
        out.text += "more: add --after " + next + "\n";
    }
    return out;
}

std::optional<rendered> render_quarantine_show(std::string_view body) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    auto h = doc ? object_member(*doc, "request") : std::nullopt;
    if (!h) {
        return std::nullopt;
    }
    details d;
    d.add("ticket", field(*h, "ticket"));
    d.add("state", field(*h, "state"));
    d.add("received", time_field(*h, "received_at"));
    d.add("request", field(*h, "method") + " " + field(*h, "target"));
    d.add("route", field(*h, "route"));
    d.add("upstream", field(*h, "upstream"));
    d.add("agent", field(*h, "agent"));
    d.add("rule", field(*h, "rule"));
    d.add("breaker", field(*h, "breaker_instance"));
    d.add("failure mode", field(*h, "failure_mode"));
    d.add("request id", field(*h, "request_id"));
    d.add("body", field(*h, "body_bytes") + (field(*h, "body_redacted", "") == "true"
                                                  ? " bytes (shown to the operator role and above)"
                                                  : " bytes (body_base64 in --json)"));
    d.add("release status", field(*h, "release_status"));
    d.add("release attempts", field(*h, "release_attempts"));
    if (auto why = field(*h, "discard_reason", ""); !why.empty()) {
        d.add("discard reason", why);
    }
    std::string o = d.to_string();
    if (auto headers = array_member(*h, "headers"); headers && headers->size() > 0) {
        o += "\nheaders:\n";
        for (auto pair : *headers) {
            simdjson::dom::array nv;
            std::string_view n;
            std::string_view v;
            if (pair.get(nv) == simdjson::SUCCESS && nv.size() == 2 && nv.at(0).get(n) == simdjson::SUCCESS &&
                nv.at(1).get(v) == simdjson::SUCCESS) {
                o += "  " + printable(n) + ": " + printable(v) + "\n";
            }
        }
    }
    if (auto history = array_member(*h, "history"); history && history->size() > 0) {
        table t{{"AT", "FROM", "TO", "ACTOR", "DETAIL"}};
        for (auto e : *history) {
            t.add({time_field(e, "at"), field(e, "from"), field(e, "to"), field(e, "actor"), field(e, "detail")});
        }
        o += "\nhistory:\n" + t.to_string();
    }
    return rendered{o, true, {}};
}

std::optional<rendered> render_quarantine_result(std::string_view body, std::string_view verb) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    auto r = doc ? object_member(*doc, "result") : std::nullopt;
    if (!r) {
        return std::nullopt;
    }
    rendered out;
    out.ok = bool_field(*r, "ok");
    const std::string past = verb == "release" ? "released" : "discarded";
    if (out.ok) {
        out.text = field(*r, "ticket") + ": " + past;
        if (auto st = integer_field(*r, "status"); st && *st > 0 && verb == "release") {
            out.text += " (upstream answered " + std::to_string(*st) + ")";
        }
    } else {
        if (field(*r, "code") == "outcome_unknown") {
            // Not "failed": it may have been delivered, and a second send is what to avoid.
            out.text = field(*r, "ticket") + ": outcome unknown: it may have been delivered; look at it with "
                       "`breakerctl quarantine show " + field(*r, "ticket") +
                       "` before releasing again (that needs --force --attempts N)";
        } else {
            out.text = field(*r, "ticket") + ": " + std::string{verb} + " failed: " + field(*r, "code");
        }
        if (auto m = field(*r, "message", ""); !m.empty()) {
            out.text += ": " + m;
        }
        if (auto st = integer_field(*r, "status"); st && *st > 0) {
            out.text += " (upstream answered " + std::to_string(*st) + ")";
        }
    }
    out.text += "\n";
    return out;
}

std::optional<rendered> render_quarantine_summary(std::string_view body, std::string_view verb) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    auto s = doc ? object_member(*doc, "summary") : std::nullopt;
    if (!s) {
        return std::nullopt;
    }
    auto n = [&](std::string_view k) { return integer_field(*s, k).value_or(0); };
    rendered out;
    out.text = "matched " + std::to_string(n("matched")) + ": ";
    if (verb == "release") {
        out.text += "released " + std::to_string(n("released")) + ", failed " + std::to_string(n("failed")) +
                    ", unknown " + std::to_string(n("unknown")) + ", skipped " + std::to_string(n("skipped")) + "\n";
        if (n("unknown") > 0) {
            out.text += "requests whose outcome is unknown are never retried; inspect them with "
                        "breakerctl quarantine list --state outcome_unknown\n";
        }
        if (const auto halted = field(*s, "halted", ""); !halted.empty()) {
            out.text += "halted: " + halted + "\n";
            out.ok = false;
            return out;
        }
        // Matched and none released (every one skipped: the agent switched off, a sandbox
        // still applying, records another run took): nothing the operator asked for happened.
        out.ok = n("failed") == 0 && n("unknown") == 0 && !(n("matched") > 0 && n("released") == 0);
        if (n("skipped") > 0) {
            out.text += "skipped requests were not sent (changed since listed, or refused now); see what is still "
                        "held with breakerctl quarantine list --state held\n";
        }
    } else {
        out.text += "discarded " + std::to_string(n("discarded")) + ", skipped " + std::to_string(n("skipped")) + "\n";
        if (const auto halted = field(*s, "halted", ""); !halted.empty()) {
            out.text += "halted: " + halted + "\n";
            out.ok = false;
        }
        // Matched and none discarded (each changed since listed, or refused): nothing the
        // operator asked for happened.
        if (n("matched") > 0 && n("discarded") == 0) {
            out.ok = false;
        }
    }
    // A run that ended early did not act on every record it was asked to: not a success,
    // and said so (the records it did not reach are as they were).
    if (bool_field(*s, "stopped")) {
        out.text += "stopped: breakerbox began to shut down; the records not reached are as they were (" +
                    std::string{verb == "release" ? "still held" : "not discarded"} + "): run it again\n";
        out.ok = false;
    }
    if (const auto incomplete = field(*s, "incomplete", ""); !incomplete.empty()) {
        out.text += "incomplete: " + incomplete + "\n";
        out.ok = false;
    }
    return out;
}

std::optional<rendered> render_config_show(std::string_view body) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    if (!doc || !member(*doc, "config")) {
        return std::nullopt;
    }
    std::string o = "version " + field(*doc, "version") + "\n";
    std::string cfg;
    pretty(*member(*doc, "config"), 0, cfg);
    return rendered{o + cfg + "\n", true, {}};
}

std::optional<rendered> render_config_change(std::string_view body) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    if (!doc || doc->type() != element_type::OBJECT || !member(*doc, "applied")) {
        return std::nullopt;
    }
    std::string o = bool_field(*doc, "applied") ? "applied as version " + field(*doc, "version") + "\n"
                                                : std::string{"dry run: nothing applied\n"};
    auto diff = array_member(*doc, "diff");
    if (!diff || diff->size() == 0) {
        o += "no changes to rules or breakers\n";
    } else {
        o += "changes:\n";
        for (auto l : *diff) {
            o += "  " + printable(scalar_text(l)) + "\n";
        }
    }
    for (const auto& [member_name, title] : {std::pair{"loosening", "loosens guards (needs the admin role):"},
                                             std::pair{"still_enforcing", "still enforcing (not shadowed by metrics_only):"},
                                             std::pair{"warnings", "not applied:"},
                                             std::pair{"config_warnings", "warnings (applied all the same):"}}) {
        if (auto lines = array_member(*doc, member_name); lines && lines->size() > 0) {
            o += std::string{title} + "\n";
            for (auto l : *lines) {
                o += "  " + printable(scalar_text(l)) + "\n";
            }
        }
    }
    // Applied in part (settings fixed until a restart, TLS files that did not load): not
    // what was asked for, so a script that goes on only on success stops here.
    if (auto w = array_member(*doc, "warnings"); w && w->size() > 0) {
        return rendered{o, false, "applied in part: " + std::to_string(w->size()) +
                                      " setting(s) did not take effect (listed under \"not applied\")"};
    }
    return rendered{o, true, {}};
}

std::optional<rendered> render_audit(std::string_view body) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    auto list = doc ? array_member(*doc, "entries") : std::nullopt;
    if (!list) {
        return std::nullopt;
    }
    table t{{"ID", "AT", "ACTOR", "ROLE", "ACTION", "TARGET", "RESULT", "REASON"}};
    for (auto e : *list) {
        t.add({field(e, "id"), time_field(e, "at"), field(e, "actor"), field(e, "role"),
               field(e, "method") + " " + field(e, "path"), field(e, "target"), field(e, "result"),
               field(e, "reason")});
    }
    std::string text = t.rows() == 0 ? std::string{"no audit entries\n"} : t.to_string();
    // Oldest first, a page at a time: say where the next page starts.
    if (const auto next = field(*doc, "next_after", ""); !next.empty() && next != "null") {
        text += "more: breakerctl audit --after " + next + "\n";
    }
    return rendered{std::move(text), true, {}};
}

std::optional<rendered> render_audit_verify(std::string_view body) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    if (!doc || !member(*doc, "ok")) {
        return std::nullopt;
    }
    rendered out;
    out.ok = bool_field(*doc, "ok");
    if (out.ok) {
        out.text = "audit log verified: " + field(*doc, "entries") + " entries, hash chain intact\n";
    } else {
        out.text = "audit log does NOT verify: first bad entry " + field(*doc, "first_bad") + ": " +
                   field(*doc, "problem") + " (" + field(*doc, "entries") + " entries checked)\n";
    }
    return out;
}

std::optional<std::string> pretty_json(std::string_view json) {
    simdjson::dom::parser p;
    auto doc = parse(p, json);
    if (!doc) {
        return std::nullopt;
    }
    std::string o;
    pretty(*doc, 0, o);
    return o + "\n";
}

std::string first_line_printable(std::string_view body) {
    return printable(body.substr(0, std::min(body.find('\n'), std::size_t{300})));
}

std::string describe_error_response(unsigned status, std::string_view body, std::string_view action) {
    simdjson::dom::parser p;
    auto doc = parse(p, body);
    auto err = doc ? object_member(*doc, "error") : std::nullopt;
    const std::string code = err ? field(*err, "code", "") : "";
    const std::string message = err ? field(*err, "message", "") : "";
    if (status == 401) {
        return "breakerctl: unauthorized: set --token or BREAKERBOX_TOKEN" +
               (message.empty() ? std::string{} : " (" + message + ")") + "\n";
    }
    if (status == 403) {
        return "breakerctl: forbidden: your token's role cannot " + std::string{action} +
               (message.empty() ? std::string{} : ": " + message) + "\n";
    }
    if (code.empty()) {
        std::string o = "breakerctl: the admin API answered HTTP " + std::to_string(status);
        if (const auto first = first_line_printable(body); !first.empty()) {
            o += ": " + first;
        }
        return o + "\n";
    }
    std::string o = "breakerctl: " + printable(code) + ": " + printable(message);
    if (auto f = field(*err, "field", ""); !f.empty()) {
        o += " (field " + printable(f) + ")";
    }
    o += " [HTTP " + std::to_string(status) + "]\n";
    if (auto errors = array_member(*doc, "errors")) {
        for (auto e : *errors) {
            o += "  " + printable(scalar_text(e)) + "\n";
        }
    }
    return o;
}

std::string describe_transport_error(std::string_view admin_url, std::string_view error) {
    return "breakerctl: cannot reach the admin API at " + std::string{admin_url} + ": " + std::string{error} + "\n";
}

}  // namespace bb::ctl
