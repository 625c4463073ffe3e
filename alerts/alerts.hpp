#pragma once
// Alerts to on-call: sinks from the config's "alerts" section (generic JSON webhook, Slack
// incoming webhook, PagerDuty Events API v2), routed by severity, sent from one background
// thread with retries and bounded queues.
//
// The data plane never waits on this module (PRODUCT.md principle 6): publish() only copies
// the alert into bounded per-sink queues under a short lock and wakes the sender thread; it
// never does I/O, never blocks on a full queue (it drops and counts), never throws.
//
// This header is deliberately free of Asio/Beast so the proxy can include it cheaply; the
// I/O lives in dispatcher.cpp.

#include "core/json_reader.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bb::alerts {

enum class sink_kind { webhook, slack, pagerduty };

std::string_view to_string(sink_kind k);

struct sink_config {
    std::string name;
    sink_kind kind = sink_kind::webhook;
    std::string url;                      // http:// or https://
    std::vector<std::string> severities;  // which of "sev1".."sev4" go here; empty = all
    std::string routing_key;              // pagerduty only, required there
    std::string ca_file;                  // optional, https only; default: the system store
    std::vector<std::pair<std::string, std::string>> headers;  // extra request headers, e.g. auth
    bool operator==(const sink_config&) const = default;
};

struct alerts_config {
    std::vector<sink_config> sinks;
    std::size_t queue_max = 1000;  // per sink; resolves may use as many again
    // Ten attempts from 0.5 s doubling to 30 s: about two minutes, so a receiver's brief
    // outage (a 503 for ten seconds, a network blip) does not lose a trip's page.
    std::uint32_t max_attempts = 10;
    std::chrono::milliseconds initial_backoff{500};
    std::chrono::milliseconds max_backoff{30000};
    std::chrono::milliseconds timeout{5000};  // per attempt: resolve + connect + TLS + write + read
    bool operator==(const alerts_config&) const = default;
};

// Parses the top-level "alerts" section:
//   {"sinks": [{"name", "type": "webhook|slack|pagerduty", "url", "severities": [...],
//               "routing_key", "ca_file", "headers": {"k": "v"}}],
//    "queue_max", "max_attempts", "initial_backoff": "500ms", "max_backoff": "30s", "timeout": "5s"}
// Every error goes into errs with its JSON path ("alerts.sinks[1].url: ..."). A null
// section gives the default (empty) config.
alerts_config parse_alerts(const simdjson::dom::element* section, cfg::errors& errs);

struct alert {
    std::string event;     // "breaker_tripped", "breaker_manual_trip", "breaker_reset", "breaker_mode", "breaker_storm",
                           // "breaker_restored_open", "rule_denied",
                           // "store_trouble", "test"
    std::string severity;  // "sev1".."sev4"
    std::string summary;   // one line for people
    std::string breaker, rule, failure_mode, key, actor, reason, request_id;
    std::string dedup_key;     // PagerDuty dedup_key; e.g. the breaker instance (defaults to breaker)
    bool resolve = false;      // PagerDuty event_action "resolve" (e.g. on reset) instead of "trigger"
    // A resolve whose incident's severities are not known (kept in memory: a restart since
    // its trigger): to every sink, once, whatever severities it takes.
    bool every_sink = false;
    // Not to Slack sinks: the resolve of a page that may never have gone out (one of a storm's
    // instances restored open and only counted at the start), where a chat line per instance
    // would flood the channel. Pager and webhook sinks get it: it closes an incident left
    // open, and a receiver ignores the resolve of one it never had.
    bool not_to_chat = false;
    std::int64_t at_ms = 0;    // wall clock, ms since the epoch; publish() fills it in when 0
};

struct sink_stats {
    std::string name;
    std::uint64_t sent = 0;
    std::uint64_t failed = 0;   // gave up (after max_attempts, or a non-retryable answer)
    std::uint64_t retries = 0;  // attempts after the first
    std::uint64_t dropped = 0;  // queue full (or shutting down)
    std::string last_error;
};

// Thread-safe: every member may be called from any thread.
class dispatcher {
public:
    // Starts ONE background thread with its own io_context. Sinks whose URL cannot be
    // used (parse_alerts rejects those already) count every alert as failed.
    explicit dispatcher(alerts_config cfg);
    // Stops: alerts still queued are not sent; a send in flight gets up to cfg.timeout.
    ~dispatcher();
    dispatcher(const dispatcher&) = delete;
    dispatcher& operator=(const dispatcher&) = delete;

    // Non-blocking, never throws: routes by severity to each matching sink's bounded queue
    // (a full queue drops the alert and counts it; a resolve is dropped only at twice the
    // bound, so a storm of triggers does not cost the resolve of one that went out). Holds
    // one mutex for O(sinks) work.
    void publish(const alert& a);
    // A reload's "alerts" section, applied in place. A sink configured again (same name,
    // type, URL, routing key, headers, and ca_file with the same contents; its severities may
    // change) keeps its queue and the alert it is sending: what it was given before the
    // reload stays ahead of what comes after, so a resolve never overtakes its trigger. A
    // sink removed or changed (a rotated URL) gets nothing new and still sends what it had
    // queued. The settings (queue_max, attempts, backoff, timeout) apply from the next alert.
    void reconfigure(alerts_config next);
    // Per sink name, whatever reloads changed: the counts of the sinks it was, summed; the
    // newest one's last error.
    std::vector<sink_stats> stats() const;
    // Alerts waiting in the queues (not counting ones being sent).
    std::size_t queued() const;
    // Waits (condition variable, no sleeping) until every queue is empty and nothing is in
    // flight, or until the deadline. True when idle. (Shutdown: a trip just before SIGTERM
    // still reaches on-call; tests: no sleeping to wait for a delivery.)
    bool flush(std::chrono::milliseconds deadline);

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

// Pure: the JSON body each sink kind sends.
std::string render_payload(sink_kind kind, const alert& a, const sink_config& s);

// Pure helpers, exposed for tests and for the admin API's "test alert" view.
struct url_parts {
    bool tls = false;
    std::string host;  // without brackets for IPv6 literals
    std::uint16_t port = 0;
    std::string target;  // path and query, at least "/"
};
// nullopt with a reason in *why when the URL is not http(s)://host[:port][/path].
std::optional<url_parts> parse_url(std::string_view url, std::string* why = nullptr);
// "2024-05-01T12:00:00.123Z"
std::string iso8601(std::int64_t ms_since_epoch);
// Delay before retry number `retry` (1 = the first retry): initial * 2^(retry-1), capped at
// max, times `jitter` (expected in [0.8, 1.2]); then capped at max again.
std::chrono::milliseconds backoff_delay(std::uint32_t retry, std::chrono::milliseconds initial,
                                        std::chrono::milliseconds max, double jitter);

}  // namespace bb::alerts
