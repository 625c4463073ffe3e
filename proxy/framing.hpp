#pragma once
// Strict request framing, checked on the raw bytes of the request head before Beast sees
// them. Boost 1.81's parser accepts several ambiguous forms (obs-fold, `chunked, gzip`,
// list-valued Content-Length, CL together with TE, HTTP/1.0 with TE); a proxy that lets
// those through can be desynchronised from its upstream (request smuggling), so each is a
// 400 and the connection is closed.
//
// Pure functions of their input: no I/O, no Beast; thread-safe.

#include "config/config.hpp"

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace bb::proxy {

struct head_verdict {
    int status = 0;         // 0: acceptable; otherwise the status to answer with
    std::string code;       // machine-readable error code, e.g. "bad_framing"
    std::string message;    // for people
    bool ok() const { return status == 0; }
};

// `raw` is the request line and header fields including the final empty line (CRLF CRLF).
head_verdict check_request_head(std::string_view raw, std::size_t max_header_count);

// RFC 9110 9.3.1-2: content in a GET or HEAD has no defined meaning, and some servers (and
// the balancers in front of them) read none: its bytes would be the next request on that
// upstream connection, one no route, scope or rule saw (and its answer the next client's).
// Such a request is refused (check_request_head), and not released if held before that.
inline bool body_may_be_read_as_a_request(std::string_view method) { return method == "GET" || method == "HEAD"; }

// Position just past the CRLF CRLF that ends a head in `data`, or npos. `from` lets a
// caller resume the search after more bytes arrive.
std::size_t find_head_end(std::string_view data, std::size_t from = 0);

bool iequals(std::string_view a, std::string_view b);
// Whether `s` starts with `prefix`, compared as iequals compares.
bool istarts_with(std::string_view s, std::string_view prefix);

// A request target split for routing: origin-form ("/p?q"), absolute-form
// ("http://host/p?q", which servers must accept) or "*". False for anything else.
struct target_parts {
    std::string_view host;         // from absolute-form, else empty
    std::string_view path;         // without the query
    std::string_view origin_form;  // path + query
};
bool split_target(std::string_view target, target_parts& out);
// Why a request path could mean one thing to our routing and another to the upstream, or
// "" when it cannot: dot segments ("/send/../admin", also percent-encoded), encoded "/" or
// "\\", a backslash, an encoded NUL. Such paths are refused (400) rather than normalized:
// routes, agent scopes and rules all match on the path as sent.
std::string_view ambiguous_path(std::string_view path);
// An upstream's path (a composite subrequest's URL) under that upstream's base path: the
// path a client would send for it, without the base ("/" for the base itself); nullopt when
// it is not under it (`/services/database` is not under `/services/data`).
std::optional<std::string_view> path_under_base(std::string_view path, std::string_view base);

// Whether route `r` takes `method` and `path` (its match.path, path_prefix and methods; not
// its host): without case, an exact path also with one trailing slash (upstreams commonly
// serve /v3/Mail/send and /v3/mail/send/ as /v3/mail/send, so the route and its rules must
// meet them too; matching more is the safe side).
bool route_takes(const route_config& r, std::string_view method, std::string_view path);

// Why `scope` refuses subrequest #`index` of a composite request to upstream `upstream` (base
// path `base`), as an out_of_scope message names it: its URL ambiguous, outside the base
// path, or its method or path (without the base) not allowed; "" when none of these. Its
// route is the caller's to judge (from where the request was sent). `what` names it when it
// is not a composite's subrequest (a Bulk API job's equivalent request).
std::string subrequest_refusal(const agent_scope& scope, std::size_t index, std::string_view method,
                               std::string_view url, std::string_view base, std::string_view upstream,
                               std::string_view what = {});
// How such a refusal names where it was: " in subrequest #`index` of this composite request",
// or, with `what`, " (`what`)".
std::string subrequest_which(std::size_t index, std::string_view what = {});

}  // namespace bb::proxy
