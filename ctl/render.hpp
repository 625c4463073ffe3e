#pragma once
// Pure rendering for breakerctl: the admin API's JSON in, human text out. No I/O, so every
// view is unit-tested from sample bodies. A body that does not have the expected shape
// renders as nullopt and the caller prints it raw rather than guessing.
//
// Thread-safe: no shared state.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bb::ctl {

// Wall-clock milliseconds since the epoch as ISO-8601 UTC: "2026-03-01T12:00:05Z"
// (".250" added when the milliseconds are not zero).
std::string iso8601(std::int64_t ms);

// Replaces control characters (newlines, ESC, C1 controls such as U+009B, bidi overrides,
// bytes that are not UTF-8) so a server-supplied string can neither break a table's alignment,
// nor drive the terminal, nor print in another order than it reads.
std::string printable(std::string_view s);
// The same for text of many lines (metrics, a body of an unknown shape): keeps line breaks.
std::string printable_text(std::string_view s);

// Left-aligned columns, two spaces apart, widths from the widest cell (in code points);
// the last column is not padded.
class table {
public:
    explicit table(std::vector<std::string> header);
    void add(std::vector<std::string> row);
    std::size_t rows() const { return rows_.size(); }
    std::string to_string() const;

private:
    std::vector<std::string> header_;
    std::vector<std::vector<std::string>> rows_;
};

// Human text plus whether the outcome counts as success (exit 0) or failure (exit 1):
// a refused release, an audit chain that does not verify.
struct rendered {
    std::string text;
    bool ok = true;
    std::string failure;  // when not ok: one line for stderr (may be empty)
};

std::optional<rendered> render_health(unsigned healthz_status, std::string_view healthz_body, unsigned readyz_status,
                                      std::string_view readyz_body);
std::optional<rendered> render_breakers(std::string_view body);         // {"breakers":[...]}
std::optional<rendered> render_breaker(std::string_view body);          // {"breaker":{...}}
std::optional<rendered> render_quarantine_list(std::string_view body);  // {"requests":[...],"next_after"}
std::optional<rendered> render_quarantine_show(std::string_view body);  // {"request":{...}}
// {"result":{...}}; verb is "release" or "discard".
std::optional<rendered> render_quarantine_result(std::string_view body, std::string_view verb);
// {"summary":{...}}; verb is "release" or "discard".
std::optional<rendered> render_quarantine_summary(std::string_view body, std::string_view verb);
std::optional<rendered> render_config_show(std::string_view body);    // {"version","config"}
std::optional<rendered> render_config_change(std::string_view body);  // {"version","applied","loosening","diff"}
std::optional<rendered> render_audit(std::string_view body);          // {"entries":[...]}
std::optional<rendered> render_audit_verify(std::string_view body);   // {"ok","entries",...}

// Indented JSON (two spaces) for a document; nullopt when it does not parse.
std::optional<std::string> pretty_json(std::string_view json);

// A body of no known shape as a message quotes it: its first line, at most 300 bytes,
// printable.
std::string first_line_printable(std::string_view body);

// The stderr message for an answer with an error status. `action` completes "your token's
// role cannot ..." for a 403. One or more lines, each ending in '\n'.
std::string describe_error_response(unsigned status, std::string_view body, std::string_view action);
// The stderr message for a request that never got an answer.
std::string describe_transport_error(std::string_view admin_url, std::string_view error);

}  // namespace bb::ctl
