#pragma once
// breakerctl's command line: arguments -> a plan (the requests to make and how to show
// the answers) -> execution over a transport -> exit code. Parsing and request building are
// pure; execution takes the transport and the output streams as parameters, so tests drive
// everything without a terminal or a network.
//
// Exit codes: 0 ok, 1 refused or failed, 2 usage error.

#include "ctl/http_client.hpp"

#include <chrono>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

namespace bb::ctl {

inline constexpr int exit_ok = 0;
inline constexpr int exit_failed = 1;
inline constexpr int exit_usage = 2;

inline constexpr std::string_view default_admin_url = "http://127.0.0.1:9901";

// How the answers of a plan are shown.
enum class view {
    health,
    metrics,
    breakers,
    breaker,
    quarantine_list,
    quarantine_show,
    quarantine_result,
    quarantine_summary,
    config_show,
    config_change,
    audit,
    audit_verify,
};

struct environment {
    std::optional<std::string> admin;  // BREAKERBOX_ADMIN
    std::optional<std::string> token;  // BREAKERBOX_TOKEN
};

struct plan {
    client_options client;
    bool json = false;
    std::string command;  // "quarantine release", for messages
    std::string action;   // completes "your token's role cannot ..."
    std::string verb;     // "release" / "discard" for quarantine results
    view kind = view::health;
    std::vector<http_request> requests;
    // config apply: the file whose JSON becomes requests[0].body's "config" at execution.
    std::string config_file;
    std::string reason;
    bool metrics_only = false;
    std::optional<std::int64_t> base_version;  // config apply --base-version
};

struct parse_result {
    std::optional<plan> p;   // set when the command line is valid
    bool help = false;       // -h/--help/help: print usage() to stdout, exit 0
    std::string error;       // usage error: print it and usage() to stderr, exit 2
};

parse_result parse_args(const std::vector<std::string>& args, const environment& env);

std::string usage();

// The POST /v1/config body for `config apply`: {"config":<file JSON>,"reason":..,"metrics_only":..
// [,"base_version":N]}. nullopt with *why set when the file is not a JSON object.
std::optional<std::string> config_apply_body(std::string_view file_text, std::string_view reason, bool metrics_only,
                                             std::string* why, std::optional<std::int64_t> base_version = std::nullopt);

// Makes the transport for a plan's client options; tests substitute a fake.
using transport_factory = std::function<transport(const client_options&)>;
transport network_transport(const client_options& opts);

// Runs a parsed plan: sends its requests, prints the answers, returns the exit code.
int execute(plan& p, const transport& t, std::ostream& out, std::ostream& err);

// The whole CLI: parse, make the transport, execute.
int run(const std::vector<std::string>& args, const environment& env, std::ostream& out, std::ostream& err,
        const transport_factory& make_transport = network_transport);

}  // namespace bb::ctl
