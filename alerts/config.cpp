// parse_alerts: the "alerts" config section into alerts_config, every error at its path.
#include "alerts/alerts.hpp"

#include "core/file.hpp"
#include "core/pem.hpp"

#include <algorithm>
#include <set>

namespace bb::alerts {

namespace {

constexpr std::string_view section_path = "alerts";

bool is_token_char(char c) {
    // RFC 9110 tchar
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        return true;
    }
    return std::string_view{"!#$%&'*+-.^_`|~"}.find(c) != std::string_view::npos;
}

std::string lower(std::string_view s) {
    std::string out{s};
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

void parse_headers(simdjson::dom::element e, const std::string& path, cfg::errors& errs,
                   std::vector<std::pair<std::string, std::string>>& out) {
    simdjson::dom::object obj;
    if (e.get(obj) != simdjson::SUCCESS) {
        errs.add(path, std::string{"must be an object of header names to values, not "} +
                           std::string{cfg::type_name(e.type())});
        return;
    }
    // Framing and routing headers are ours: a config that set them could desynchronise
    // the request we send.
    static const std::set<std::string, std::less<>> reserved{
        "host", "content-length", "content-type", "transfer-encoding", "connection", "te", "upgrade"};
    for (auto field : obj) {
        const auto hpath = cfg::child(path, field.key);
        const std::string_view name = field.key;
        if (name.empty() || !std::all_of(name.begin(), name.end(), is_token_char)) {
            errs.add(hpath, cfg::quote(name) + " is not a valid header name");
            continue;
        }
        if (reserved.contains(lower(name))) {
            errs.add(hpath, "is set by breakerbox and cannot be configured");
            continue;
        }
        if (std::any_of(out.begin(), out.end(), [&](const auto& h) { return lower(h.first) == lower(name); })) {
            // (A version stored before this check is read as it was.)
            errs.add_since_stored(hpath, "is given twice (header names compare without case): it would be sent twice");
        }
        std::string_view value;
        if (field.value.get(value) != simdjson::SUCCESS) {
            errs.add(hpath, std::string{"must be a string, not "} + std::string{cfg::type_name(field.value.type())});
            continue;
        }
        if (std::any_of(value.begin(), value.end(), [](char c) {
                const auto u = static_cast<unsigned char>(c);
                return (u < 0x20 && c != '\t') || u == 0x7f;
            })) {
            errs.add(hpath, "must not contain control characters (CR, LF, ...)");
            continue;
        }
        out.emplace_back(std::string{name}, std::string{value});
    }
}

std::optional<sink_config> parse_sink(simdjson::dom::element e, const std::string& path, cfg::errors& errs,
                                      std::set<std::string>& names) {
    cfg::object_reader r{e, path, errs};
    if (!r.is_object()) {
        return std::nullopt;
    }
    const auto before = errs.size();
    sink_config s;
    if (auto name = r.string("name", true)) {
        if (name->empty()) {
            errs.add(r.path_of("name"), "must not be empty");
        } else if (!names.insert(*name).second) {
            errs.add(r.path_of("name"), cfg::quote(*name) + " is used by another sink");
        }
        s.name = std::move(*name);
    }
    if (auto type = r.string("type", true)) {
        if (*type == "webhook") {
            s.kind = sink_kind::webhook;
        } else if (*type == "slack") {
            s.kind = sink_kind::slack;
        } else if (*type == "pagerduty") {
            s.kind = sink_kind::pagerduty;
        } else {
            errs.add(r.path_of("type"), cfg::quote(*type) + " is not a sink type (webhook, slack or pagerduty)");
        }
    }
    std::optional<url_parts> url;
    if (auto u = r.string("url", true)) {
        std::string why;
        url = parse_url(*u, &why);
        if (!url) {
            // Not quoted: a sink's URL can be its credential (a Slack incoming webhook), and
            // config errors reach logs and the audit log's diff, which viewers read.
            errs.add(r.path_of("url"), "is not a usable URL: " + why);
        }
        s.url = std::move(*u);
    }
    if (auto sevs = r.strings("severities")) {
        std::set<std::string> seen;
        for (std::size_t i = 0; i < sevs->size(); ++i) {
            const auto& v = (*sevs)[i];
            if (v != "sev1" && v != "sev2" && v != "sev3" && v != "sev4") {
                errs.add(cfg::child(r.path_of("severities"), i), cfg::quote(v) + " is not a severity (sev1 to sev4)");
            } else if (!seen.insert(v).second) {
                errs.add(cfg::child(r.path_of("severities"), i), cfg::quote(v) + " is listed twice");
            }
        }
        s.severities = std::move(*sevs);
    }
    if (auto key = r.string("routing_key")) {
        if (s.kind != sink_kind::pagerduty) {
            errs.add(r.path_of("routing_key"), "is only for pagerduty sinks");
        } else if (key->empty()) {
            errs.add(r.path_of("routing_key"), "must not be empty");
        }
        s.routing_key = std::move(*key);
    } else if (s.kind == sink_kind::pagerduty && !r.has("routing_key")) {
        errs.add(r.path_of("routing_key"), "is required for pagerduty sinks");
    }
    if (auto ca = r.string("ca_file")) {
        if (s.url.starts_with("http://")) {
            errs.add(r.path_of("ca_file"), "is only for https URLs");
        } else if (ca->empty()) {
            errs.add(r.path_of("ca_file"), "must not be empty");
        } else if (const file_error e = check_regular_file(*ca); e != file_error::none) {
            // Checked here, not first at the sink's first alert (a FIFO would block the
            // alert thread, a missing file would surface only when an alert is lost).
            errs.add(r.path_of("ca_file"), cfg::quote(*ca) + " " + describe(e, 0));
        } else {
            // Read as the sink will load it: a bundle cut off or without a certificate would
            // fail every alert to the sink, a page lost at the first trip.
            constexpr std::size_t max_bundle = std::size_t{16} << 20;
            file_error fe = file_error::none;
            if (auto text = read_regular_file(*ca, max_bundle, &fe); !text) {
                errs.add(r.path_of("ca_file"), cfg::quote(*ca) + " " + describe(fe, max_bundle));
            } else if (const auto why = ca_bundle_problem(*text); !why.empty()) {
                errs.add(r.path_of("ca_file"), cfg::quote(*ca) + " " + why);
            }
        }
        s.ca_file = std::move(*ca);
    }
    if (auto h = r.value("headers")) {
        parse_headers(*h, r.path_of("headers"), errs, s.headers);
    }
    r.finish();
    if (errs.size() != before) {
        return std::nullopt;
    }
    return s;
}

}  // namespace

alerts_config parse_alerts(const simdjson::dom::element* section, cfg::errors& errs) {
    alerts_config out;
    if (section == nullptr) {
        return out;
    }
    if (section->type() == simdjson::dom::element_type::NULL_VALUE) {
        // Not "no alerts": a template that renders null would silence every page.
        errs.add_since_stored(std::string{section_path}, "must be an object, not null (leave it out for no alerts)");
        return out;
    }
    cfg::object_reader r{*section, std::string{section_path}, errs};
    if (!r.is_object()) {
        return out;
    }
    if (auto sinks = r.array("sinks")) {
        std::set<std::string> names;
        std::size_t i = 0;
        for (auto e : *sinks) {
            if (auto s = parse_sink(e, cfg::child(r.path_of("sinks"), i), errs, names)) {
                out.sinks.push_back(std::move(*s));
            }
            ++i;
        }
    }
    if (auto v = r.integer("queue_max", false, 1, 1'000'000)) {
        out.queue_max = static_cast<std::size_t>(*v);
    }
    if (auto v = r.integer("max_attempts", false, 1, 100)) {
        out.max_attempts = static_cast<std::uint32_t>(*v);
    }
    const auto ms1 = std::chrono::milliseconds{1};
    const auto day = std::chrono::milliseconds{86'400'000};
    const auto bounded = [&](std::string_view key, std::chrono::milliseconds& into) {
        if (auto d = r.duration(key, false, ms1)) {
            if (*d > day) {
                errs.add(r.path_of(key), cfg::quote(cfg::format_duration(*d)) + " is too long (at most 1d)");
            } else {
                into = *d;
            }
        }
    };
    bounded("initial_backoff", out.initial_backoff);
    bounded("max_backoff", out.max_backoff);
    bounded("timeout", out.timeout);
    if (out.max_backoff < out.initial_backoff) {
        errs.add(r.path_of("max_backoff"), cfg::quote(cfg::format_duration(out.max_backoff)) +
                                               " is shorter than initial_backoff (" +
                                               cfg::format_duration(out.initial_backoff) + ")");
    }
    r.finish();
    return out;
}

}  // namespace bb::alerts
