// Pure parts of alerts: payload rendering, URL parsing, timestamps, backoff arithmetic.
#include "alerts/alerts.hpp"

#include "core/sha256.hpp"

#include <algorithm>
#include <charconv>
#include <ctime>

namespace bb::alerts {

std::string_view to_string(sink_kind k) {
    switch (k) {
        case sink_kind::webhook: return "webhook";
        case sink_kind::slack: return "slack";
        case sink_kind::pagerduty: return "pagerduty";
    }
    return "webhook";
}

namespace {

// Alert text comes from config, headers and operators; receivers reject invalid UTF-8 JSON
// (PagerDuty answers 400), so broken sequences become U+FFFD before quoting. Also bounds
// the length (whole code points only) so one huge reason cannot make a payload the
// receiver refuses.
std::string clean(std::string_view s, std::size_t max_bytes = 4096) {
    std::string out;
    out.reserve(std::min(s.size(), max_bytes));
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t len = 0;
        if (c < 0x80) {
            len = 1;
        } else if ((c & 0xE0) == 0xC0 && c >= 0xC2) {
            len = 2;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
        } else if ((c & 0xF8) == 0xF0 && c <= 0xF4) {
            len = 4;
        }
        bool ok = len != 0 && i + len <= s.size();
        for (std::size_t k = 1; ok && k < len; ++k) {
            ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
        }
        if (ok && len == 3) {
            const auto c1 = static_cast<unsigned char>(s[i + 1]);
            ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);  // overlong, surrogates
        } else if (ok && len == 4) {
            const auto c1 = static_cast<unsigned char>(s[i + 1]);
            ok = !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);  // overlong, > U+10FFFF
        }
        const std::string_view piece = ok ? s.substr(i, len) : std::string_view{"\xEF\xBF\xBD"};
        if (out.size() + piece.size() > max_bytes) {
            break;
        }
        out += piece;
        i += ok ? len : 1;
    }
    return out;
}

std::string q(std::string_view s, std::size_t max_bytes = 4096) {
    return cfg::quote(clean(s, max_bytes));
}

// Slack mrkdwn treats &, < and > as control characters (<!channel>, <url|text>); escaping
// them keeps alert text from pinging a channel or forging a link.
std::string slack_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (const char c : s) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            default: out += c;
        }
    }
    return out;
}

std::string_view pagerduty_severity(std::string_view sev) {
    if (sev == "sev1") {
        return "critical";
    }
    if (sev == "sev2") {
        return "error";
    }
    if (sev == "sev3") {
        return "warning";
    }
    if (sev == "sev4") {
        return "info";
    }
    return "error";  // unknown: better a page too many than one too few
}

struct json_object {
    std::string out = "{";
    void raw(std::string_view key, std::string_view value) {
        if (out.size() > 1) {
            out += ',';
        }
        out += cfg::quote(key);
        out += ':';
        out += value;
    }
    void str(std::string_view key, std::string_view value, std::size_t max_bytes = 4096) {
        raw(key, q(value, max_bytes));
    }
    std::string done() {
        out += '}';
        return std::move(out);
    }
};

std::string render_webhook(const alert& a) {
    json_object o;
    o.str("source", "breakerbox");
    o.str("event", a.event);
    o.str("severity", a.severity);
    o.str("summary", a.summary);
    o.str("breaker", a.breaker);
    o.str("rule", a.rule);
    o.str("failure_mode", a.failure_mode);
    o.str("key", a.key);
    o.str("actor", a.actor);
    o.str("reason", a.reason);
    o.str("request_id", a.request_id);
    o.str("dedup_key", a.dedup_key);
    o.raw("resolve", a.resolve ? "true" : "false");
    o.raw("at_ms", std::to_string(a.at_ms));
    o.str("at", a.at_ms > 0 ? iso8601(a.at_ms) : std::string{});
    return o.done();
}

std::string render_slack(const alert& a) {
    // Slack caps a section's text at 3000 characters; each value is bounded well below.
    std::string lines = "*" + slack_escape(clean(a.summary.empty() ? a.event : a.summary, 500)) + "*";
    const auto line = [&](std::string_view label, std::string_view value) {
        if (value.empty()) {
            return;
        }
        lines += "\n*";
        lines += label;
        lines += ":* ";
        lines += slack_escape(clean(value, 300));
    };
    line("Breaker", a.breaker);
    line("Rule", a.rule);
    line("Failure mode", a.failure_mode);
    line("Severity", a.severity);
    line("Key", a.key);
    line("Actor", a.actor);
    line("Reason", a.reason);
    std::string context = "breakerbox · " + slack_escape(clean(a.event, 100));
    if (a.at_ms > 0) {
        context += " · " + iso8601(a.at_ms);
    }
    if (!a.request_id.empty()) {
        context += " · request " + slack_escape(clean(a.request_id, 100));
    }
    std::string out = "{\"text\":";
    out += q(slack_escape(clean(a.summary.empty() ? a.event : a.summary, 500)));
    out += ",\"blocks\":[{\"type\":\"section\",\"text\":{\"type\":\"mrkdwn\",\"text\":";
    out += q(lines, 2900);
    out += "}},{\"type\":\"context\",\"elements\":[{\"type\":\"mrkdwn\",\"text\":";
    out += q(context);
    out += "}]}]}";
    return out;
}

std::string render_pagerduty(const alert& a, const sink_config& s) {
    json_object o;
    o.str("routing_key", s.routing_key);
    o.str("event_action", a.resolve ? "resolve" : "trigger");
    // PagerDuty correlates trigger and resolve by dedup_key (at most 255 characters); the
    // breaker instance is the natural key when the caller gave none.
    // A longer one keeps its head and gets the SHA-256 of the whole in place of the rest: cut
    // short, two instances sharing a long prefix (keys run to 256 bytes) would be one
    // incident, and the first reset would resolve both.
    std::string dedup = a.dedup_key.empty() ? a.breaker : a.dedup_key;
    if (dedup.size() > 255) {
        std::size_t head = 190;
        while (head > 0 && (static_cast<unsigned char>(dedup[head]) & 0xC0) == 0x80) {
            --head;  // not inside a UTF-8 sequence
        }
        dedup = dedup.substr(0, head) + "#" + sha256_hex(dedup);
    }
    if (!dedup.empty()) {
        o.str("dedup_key", dedup, 255);
    }
    json_object p;
    p.str("summary", a.summary.empty() ? a.event : a.summary, 1024);  // PagerDuty's limit
    p.str("source", "breakerbox");
    p.str("severity", pagerduty_severity(a.severity));
    if (a.at_ms > 0) {
        p.str("timestamp", iso8601(a.at_ms));
    }
    if (!a.breaker.empty()) {
        p.str("component", a.breaker);
    }
    if (!a.failure_mode.empty()) {
        p.str("group", a.failure_mode);
    }
    if (!a.event.empty()) {
        p.str("class", a.event);
    }
    json_object d;
    d.str("event", a.event);
    d.str("severity", a.severity);
    d.str("breaker", a.breaker);
    d.str("rule", a.rule);
    d.str("failure_mode", a.failure_mode);
    d.str("key", a.key);
    d.str("actor", a.actor);
    d.str("reason", a.reason);
    d.str("request_id", a.request_id);
    p.raw("custom_details", d.done());
    o.raw("payload", p.done());
    return o.done();
}

}  // namespace

std::string render_payload(sink_kind kind, const alert& a, const sink_config& s) {
    switch (kind) {
        case sink_kind::webhook: return render_webhook(a);
        case sink_kind::slack: return render_slack(a);
        case sink_kind::pagerduty: return render_pagerduty(a, s);
    }
    return render_webhook(a);
}

std::optional<url_parts> parse_url(std::string_view url, std::string* why) {
    const auto fail = [&](std::string reason) -> std::optional<url_parts> {
        if (why) {
            *why = std::move(reason);
        }
        return std::nullopt;
    };
    url_parts out;
    std::string_view rest;
    if (url.starts_with("http://")) {
        rest = url.substr(7);
        out.port = 80;
    } else if (url.starts_with("https://")) {
        rest = url.substr(8);
        out.tls = true;
        out.port = 443;
    } else {
        return fail("must start with http:// or https://");
    }
    for (const char c : url) {
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
            return fail("must not contain spaces or control characters");
        }
    }
    const auto slash = rest.find_first_of("/?#");
    std::string_view authority = rest.substr(0, slash);
    std::string_view target = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash);
    if (const auto hash = target.find('#'); hash != std::string_view::npos) {
        target = target.substr(0, hash);
    }
    if (authority.find('@') != std::string_view::npos) {
        return fail("must not carry credentials (use \"headers\" for authorization)");
    }
    std::string_view host;
    std::string_view port;
    if (authority.starts_with('[')) {
        const auto close = authority.find(']');
        if (close == std::string_view::npos) {
            return fail("has an unterminated IPv6 address");
        }
        host = authority.substr(1, close - 1);
        const auto after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after[0] != ':') {
                return fail("has characters after the IPv6 address");
            }
            port = after.substr(1);
        }
    } else {
        const auto colon = authority.rfind(':');
        host = authority.substr(0, colon);
        if (colon != std::string_view::npos) {
            port = authority.substr(colon + 1);
        }
    }
    if (host.empty()) {
        return fail("has no host");
    }
    if (authority.find(':') != std::string_view::npos && !authority.starts_with('[') && port.empty()) {
        return fail("has an empty port");
    }
    if (!port.empty()) {
        unsigned v = 0;
        const auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
        if (ec != std::errc{} || p != port.data() + port.size() || v == 0 || v > 65535) {
            return fail("has an invalid port");
        }
        out.port = static_cast<std::uint16_t>(v);
    }
    out.host = std::string{host};
    if (target.empty()) {
        out.target = "/";
    } else if (target[0] == '?') {
        out.target = "/" + std::string{target};
    } else {
        out.target = std::string{target};
    }
    return out;
}

std::string iso8601(std::int64_t ms) {
    const std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[40];
    const auto n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    char frac[8];
    std::snprintf(frac, sizeof frac, ".%03dZ", static_cast<int>(((ms % 1000) + 1000) % 1000));
    return std::string{buf, n} + frac;
}

std::chrono::milliseconds backoff_delay(std::uint32_t retry, std::chrono::milliseconds initial,
                                        std::chrono::milliseconds max, double jitter) {
    std::int64_t d = std::max<std::int64_t>(initial.count(), 0);
    for (std::uint32_t i = 1; i < retry && d < max.count(); ++i) {
        d *= 2;
    }
    d = std::min<std::int64_t>(d, max.count());
    const auto j = static_cast<std::int64_t>(static_cast<double>(d) * jitter);
    return std::chrono::milliseconds{std::clamp<std::int64_t>(j, 0, max.count())};
}

}  // namespace bb::alerts
