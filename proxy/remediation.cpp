#include "proxy/remediation.hpp"

#include "proxy/framing.hpp"
#include "proxy/server.hpp"
#include "proxy/upstream.hpp"

#include "core/host_name.hpp"
#include "core/utf8.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

namespace bb::proxy {

namespace {

// Runs `make()` as a coroutine on `ex` and fulfils a future with its result.
template <class T, class Make>
std::future<T> spawn_future(asio::io_context& ctx, Make make) {
    auto promise = std::make_shared<std::promise<T>>();
    auto future = promise->get_future();
    asio::co_spawn(ctx, make(), [promise](std::exception_ptr e, T value) {
        if (e) {
            promise->set_exception(e);
        } else {
            promise->set_value(std::move(value));
        }
    });
    return future;
}

// A refused write of a release's result (the queue full, a passing I/O error): worth trying
// again. invalid_state or not_found mean the record moved on (resolved, released again,
// pruned): nothing to record any more.
bool refused_for_now(const store::result& r) { return !r.ok && r.code != "invalid_state" && r.code != "not_found"; }

// A timer that stop() cancels while it exists (registered in `set`, the control thread's).
struct stoppable_timer {
    stoppable_timer(asio::io_context& ctx, std::set<asio::steady_timer*>& set) : timer{ctx}, set_{set} {
        set_.insert(&timer);
    }
    ~stoppable_timer() { set_.erase(&timer); }
    stoppable_timer(const stoppable_timer&) = delete;
    stoppable_timer& operator=(const stoppable_timer&) = delete;

    asio::steady_timer timer;

private:
    std::set<asio::steady_timer*>& set_;
};

}  // namespace

asio::awaitable<bool> await_persist(server& srv) {
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(bool)>(
        [&srv](auto handler) {
            auto ex = asio::get_associated_executor(handler);
            auto h = std::make_shared<decltype(handler)>(std::move(handler));
            srv.persist_breakers([ex, h](bool ok) { asio::post(ex, [h, ok]() mutable { std::move(*h)(ok); }); });
        },
        asio::use_awaitable);
}

remediation::remediation(asio::io_context& control, store::database& db, server& srv)
    : control_(control), db_(db), srv_(srv) {}

remediation::~remediation() = default;

std::shared_ptr<upstream_pool> remediation::pool_for(const config& cfg, std::size_t upstream_index) {
    const auto& u = cfg.upstreams[upstream_index];
    // Pools of upstreams no longer configured go (their idle sockets with them); the others
    // close what sat idle too long, as the workers' pools do.
    const auto now = std::chrono::steady_clock::now();
    for (auto it = pools_.begin(); it != pools_.end();) {
        const bool configured = std::any_of(cfg.upstreams.begin(), cfg.upstreams.end(),
                                            [&](const upstream_config& c) { return c.name == it->first; });
        if (!configured) {
            it->second->retire();
            it = pools_.erase(it);
        } else {
            it->second->sweep(now);
            ++it;
        }
    }
    auto& slot = pools_[u.name];
    // Every setting, the CA file's contents included: after a reload that removed a CA, a
    // release (held mail, API credentials) never goes out under the old trust.
    if (!slot || !same_upstream(slot->cfg(), u) || slot->response_body_limit() != cfg.limits.upstream_body_bytes) {
        if (slot) {
            slot->retire();
        }
        slot = std::make_shared<upstream_pool>(control_.get_executor(), u, cfg.limits.upstream_body_bytes,
                                               srv_.response_memory());
    }
    return slot;
}

bool remediation::snapshot(store::list_filter& filter, std::string* error) {
    if (!filter.state) {
        filter.state = store::held_state::held;
    }
    // What was held when the action began, never what is held while it runs: a release by
    // filter while the breaker is still tripped must not turn into a paced pass-through of
    // the misfire. By id, and by time as well (an id can be reused once the latest record
    // is released and pruned).
    store::result err;
    const auto latest = db_.latest_hold_id(&err);
    if (!latest) {
        *error = err.message;
        return false;
    }
    if (*latest == 0) {
        return false;
    }
    filter.upto_id = *latest;
    const auto now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(srv_.time().wall_now().time_since_epoch()).count();
    filter.to_ms = filter.to_ms ? std::min(*filter.to_ms, now_ms + 1) : now_ms + 1;
    return true;
}

void remediation::stop() {
    stopping_ = true;
    for (auto* t : pacers_) {
        t->cancel();
    }
}

std::vector<store::held_request> remediation::next_page(const store::list_filter& filter, std::int64_t& after,
                                                       std::string* error) {
    // Keyset paging: each page re-queries, so records resolved meanwhile drop out. By row
    // id: the page's last record may be discarded and pruned while a paced page is sent.
    auto page_filter = filter;
    page_filter.after_id = after;
    page_filter.limit = 500;
    store::result err;
    auto page = db_.list(page_filter, &err);
    if (!err.ok) {
        *error = err.message.empty() ? std::string{"the store could not be read"} : err.message;
        return {};
    }
    if (!page.empty()) {
        after = page.back().id;
    }
    return page;
}

namespace {

// Whether the routes a subrequest of a held composite request could take now are all its
// agent's ("" when they are), as step 5 of the live path judges one: matched as if sent by
// itself (its path under the base), the route must be of the held request's upstream and in
// the allow list. The hold keeps the host the client addressed (x-forwarded-host), not whether
// it came through the forward proxy nor to which port, which narrow the live match; so every
// route the live match could pick is judged: the first that takes it by host, method and path
// (a reverse proxy's request) and, when the held request's own route names a host (a forward
// proxy's request takes only such routes), the first such route of each upstream (the port
// decides among upstreams). Fails closed: a release may be refused that the live path would
// have let through, never the other way round.
std::string subrequest_route_now(const config& cfg, const agent_scope& scope, const route_config& held_route,
                                 std::string_view host, std::size_t upstream_index, std::size_t index,
                                 std::string_view method, std::string_view own_path, std::string_view what) {
    const std::string_view bare_host = host_name(host_without_port(host));
    std::vector<const route_config*> could_take;
    std::vector<bool> upstream_seen(cfg.upstreams.size(), false);
    for (const auto& r : cfg.routes) {
        if ((!r.match.host.empty() && !iequals(host_name(r.match.host), bare_host)) || !route_takes(r, method, own_path)) {
            continue;
        }
        const bool first = could_take.empty();
        const bool forwarded_pick = !held_route.match.host.empty() && !r.match.host.empty() &&
                                    r.upstream_index < upstream_seen.size() && !upstream_seen[r.upstream_index];
        if (forwarded_pick) {
            upstream_seen[r.upstream_index] = true;
        }
        if (first || forwarded_pick) {
            could_take.push_back(&r);
        }
    }
    const std::string which = subrequest_which(index, what);
    if (could_take.empty()) {
        return "route (none of upstream " + cfg.upstreams[upstream_index].name + " takes " +
               std::string{method.substr(0, 16)} + " " + std::string{own_path.substr(0, 256)} + ")" + which;
    }
    for (const auto* r : could_take) {
        if (r->upstream_index != upstream_index) {
            return "route (" + r->name + ", of upstream " + cfg.upstreams[r->upstream_index].name + ", takes " +
                   std::string{method.substr(0, 16)} + " " + std::string{own_path.substr(0, 256)} + ")" + which;
        }
        if (!scope.allows_route(r->name)) {
            return "route " + r->name + which;
        }
    }
    return {};
}

// What the agent's allow list and body constraints say now of a held request, as step 5 of
// the live path would judge it ("" when they let it through): a reload that narrowed them
// (the agent misfired) must not have a release send what they would refuse live. The route
// is the one it was held on; a composite request's subrequests, and the request a Bulk API
// job stands for, are held to the methods, paths and routes (subrequest_route_now) of its
// allow list.
std::string scope_now(const config& cfg, const agent_config& a, const store::held_request& rec, const target_parts& tp,
                      std::size_t upstream_index) {
    const upstream_config& up = cfg.upstreams[upstream_index];
    const agent_scope& scope = a.allow;
    if (auto why = scope.refusal(rec.route, rec.method, tp.path); !why.empty()) {
        return why;
    }
    const std::string upstream_path = up.base_path + std::string{tp.path};
    std::string_view content_type;  // the first, as the live path reads it
    for (auto it = rec.headers.rbegin(); it != rec.headers.rend(); ++it) {
        if (iequals(it->first, "content-type")) {
            content_type = it->second;
        }
    }
    const auto q = tp.origin_form.find('?');
    const std::string_view query = q == std::string_view::npos ? std::string_view{} : tp.origin_form.substr(q + 1);
    std::vector<rules::subrequest> subs;
    if (rec.method == "POST" && scope.any()) {
        if (auto why = rules::scoped_subrequests(upstream_path, content_type, rec.body, subs); !why.empty()) {
            return why;
        }
        const route_config* held_route = cfg.find_route(rec.route);
        std::string_view host;  // as the live path had it (session.cpp sets it at the hold)
        for (const auto& [name, value] : rec.headers) {
            if (host.empty() && iequals(name, "x-forwarded-host")) {
                host = value;
            }
        }
        for (std::size_t i = 0; i < subs.size(); ++i) {
            if (auto why = subrequest_refusal(scope, i, subs[i].method, subs[i].path, up.base_path, up.name, subs[i].what);
                !why.empty()) {
                return why;
            }
            if (scope.routes.empty()) {
                continue;
            }
            if (held_route == nullptr) {
                return "route " + rec.route + " (no longer configured)";
            }
            const std::string_view own_path = *path_under_base(subs[i].path, up.base_path);
            if (auto why = subrequest_route_now(cfg, scope, *held_route, host, upstream_index, i, subs[i].method,
                                                own_path, subs[i].what);
                !why.empty()) {
                return why;
            }
        }
    }
    if (!a.constraints.empty()) {
        auto broken = rec.method == "POST" ? rules::constrained_subrequests(upstream_path, rec.body, &ambiguous_path, nullptr)
                                           : std::string{};
        if (broken.empty()) {
            broken = rules::check_body_constraints(a.constraints, content_type, rec.body, query, upstream_path,
                                                   rec.method);
        }
        if (!broken.empty()) {
            return broken + " (its constraints)";
        }
    }
    return {};
}

// A sandbox breaker that covers the held request now (it, its overflow or its breaker-wide
// instance holds traffic back), as the live path would map the request to breakers: "" when
// none does. A sandbox that began after the hold (forced open, or tripped, since) must keep
// the release from being a real send as much as one recorded at the hold.
std::string sandbox_now(const runtime& rt, const route_config& route, const store::held_request& rec,
                        const target_parts& tp, const upstream_config& up, time_point now) {
    if (!rt.engine) {
        return {};
    }
    std::vector<rules::header_field> headers;
    headers.reserve(rec.headers.size());
    std::string_view content_type;
    std::string_view forwarded_host;  // the host the client addressed (a tunnel's, a URL's, or Host)
    for (const auto& [name, value] : rec.headers) {
        if (content_type.empty() && iequals(name, "content-type")) {
            content_type = value;
        }
        if (iequals(name, "x-forwarded-host")) {
            if (forwarded_host.empty()) {
                forwarded_host = value;
            }
            continue;  // ours (set at the hold); the client's own, which rules saw, is not kept
        }
        if (iequals(name, "x-forwarded-proto")) {
            continue;  // likewise
        }
        if (iequals(name, "x-forwarded-for") || iequals(name, "via")) {
            // The client's list with our element appended at the hold: rules saw the
            // client's list alone (none when ours is the only element).
            std::string_view v{value};
            const auto comma = v.rfind(',');
            if (comma == std::string_view::npos) {
                continue;
            }
            v = v.substr(0, comma);
            while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) {
                v.remove_suffix(1);
            }
            headers.push_back({name, v});
            continue;
        }
        headers.push_back({name, value});
    }
    // The host as the live path gives it to rules (session.cpp, fill_view): a route for any
    // host is its upstream's, whatever the client wrote; a route that names hosts sees the
    // one addressed, in one spelling.
    const std::string host = route.match.host.empty() ? rt.upstreams[route.upstream_index].rule_host
                                                       : canonical_host(forwarded_host);
    const std::string upstream_path = up.base_path.empty() ? std::string{} : up.base_path + std::string{tp.path};
    rules::request_view view;
    view.method = rec.method;
    view.target = rec.target;  // as received, as the live path gives it
    view.path = tp.path;
    view.upstream_path = upstream_path;
    const auto q = tp.origin_form.find('?');
    view.query = q == std::string_view::npos ? std::string_view{} : tp.origin_form.substr(q + 1);
    view.host = host;
    view.route = rec.route;
    view.agent = rec.agent;
    view.content_type = content_type;
    view.body = rec.body;
    view.headers = headers;
    std::vector<rules::engine::rule_key> keys;
    rt.engine->keys_for(view, keys);
    for (const auto& k : keys) {
        const auto& r = rt.engine->rules().rules[k.rule];
        const auto* b = rt.cfg->find_breaker(r.trips);
        if (b == nullptr || b->act != breakers::action::sandbox) {
            continue;
        }
        const std::string instance = rt.breakers->instance_name(*b, k.key);
        if (rt.breakers->holds_back(instance, now)) {
            return instance;
        }
    }
    return {};
}

}  // namespace

asio::awaitable<store::result> remediation::release_one(std::string ticket, std::string actor, bool force,
                                                        std::optional<store::held_state> expected,
                                                        std::optional<std::uint32_t> expected_attempts) {
    if (force && !expected_attempts) {
        // Two callers forcing one record must not both re-send it: the store's check of the
        // attempts each saw lets one through (database::begin_release).
        co_return store::result::failure("bad_field", "a forced release needs the attempts its caller saw");
    }
    store::result read_error;
    auto rec = db_.get(ticket, &read_error);
    if (!rec) {
        // A record that could not be read (store busy, corrupt headers) is not "not found":
        // nothing was sent, and the operator may try again.
        co_return read_error.code == "not_found" ? store::result::failure("not_found", "no quarantined request " + ticket)
                                                 : read_error;
    }
    // What would refuse the release under `cfg` and the breakers now (nothing is sent then),
    // and the upstream it goes to. Asked before the release is begun and again once it is:
    // the begin may wait seconds behind a flood of holds, meanwhile an operator may switch
    // the agent off or a reload remove the upstream (or the CA it was trusted under).
    std::size_t upstream_index = 0;
    auto refusal = [&](const config& cfg) -> std::optional<store::result> {
        // A shutdown sends nothing more: a release begun now would be cut by the end of the
        // drain (or a supervisor's kill) mid-exchange and come back outcome_unknown, where it
        // can stay held with nothing sent. Asked before the begin and again after it.
        if (stopping_) {
            return store::result::failure("shutting_down", "breakerbox is shutting down: release " + ticket +
                                                               " again once it is back; nothing was sent");
        }
        if (body_may_be_read_as_a_request(rec->method) && !rec->body.empty()) {
            // Held before such requests were refused (proxy/framing.hpp).
            return store::result::failure("invalid_state", ticket + " is a " + rec->method +
                                                               " with a body, which no upstream is sent (it may read "
                                                               "the body as another request): discard it; nothing "
                                                               "was sent");
        }
        if (!rec->agent.empty()) {
            // An agent an operator switched off sends nothing, a release of what it sent
            // before included (a bulk release by breaker or time range would otherwise send a
            // killed agent's held mail): reset agent/<id> first, or discard.
            if (srv_.breakers()->holds_back("agent/" + rec->agent, srv_.now())) {
                return store::result::failure("agent_disabled", "agent " + rec->agent +
                                                                    " is switched off (breaker agent/" + rec->agent +
                                                                    "): reset it to release " + ticket +
                                                                    ", or discard it; nothing was sent");
            }
            // An agent in sandbox mode must not reach customers, with what it sent before it
            // was put there included: replaying a hold taken as a real send would be one.
            const auto a = std::find_if(cfg.agents.begin(), cfg.agents.end(),
                                        [&](const agent_config& c) { return c.id == rec->agent; });
            if (a == cfg.agents.end()) {
                // Removed (or renamed) by a reload: its kill switch and sandbox are gone with
                // it, so neither can be checked; an agent switched off, or in sandbox mode,
                // and then removed must not have its held mail sent by a bulk release.
                return store::result::failure("invalid_state", "agent " + rec->agent + " of " + ticket +
                                                                   " is no longer configured, so its kill switch and "
                                                                   "sandbox cannot be checked: configure it again to "
                                                                   "release it, or discard it; nothing was sent");
            }
            if (a->sandbox) {
                return store::result::failure("agent_sandboxed", "agent " + rec->agent +
                                                                     " is in sandbox mode: take it out of sandbox to "
                                                                     "release " + ticket +
                                                                     ", or discard it; nothing was sent");
            }
        }
        // Held under sandbox breakers (one instance name a line), as sent: a real send only
        // once every one of those sandboxes is over (reset, closed, or removed by a reload).
        // Their breaker-wide instances too: a key reset while the whole breaker is forced
        // open is still sandboxed on the live path. (agent/<id>: the agent's sandbox mode,
        // checked above.)
        for (std::string_view rest = rec->sandboxed_by; !rest.empty();) {
            const auto nl = rest.find('\n');
            std::string name{rest.substr(0, nl)};
            rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
            // Recorded before keys were escaped: the instance goes by its escaped name now.
            if (const auto slash = name.find('/'); slash != std::string::npos && needs_escape(name)) {
                name = name.substr(0, slash + 1) + escape_unshowable(name.substr(slash + 1), rules::max_key_bytes);
            }
            if (!name.empty() && !name.starts_with("agent/") && srv_.breakers()->holds_back(name, srv_.now())) {
                return store::result::failure("sandboxed", "breaker " + std::string{name} +
                                                               " still sandboxes this traffic (the request was held "
                                                               "under it, for a real send): reset it to release " +
                                                               ticket + ", or discard it; nothing was sent");
            }
        }
        upstream_index = cfg.upstreams.size();
        for (std::size_t i = 0; i < cfg.upstreams.size(); ++i) {
            if (cfg.upstreams[i].name == rec->upstream) {
                upstream_index = i;
            }
        }
        if (upstream_index == cfg.upstreams.size()) {
            return store::result::failure("invalid_state", "upstream " + rec->upstream + " of " + ticket +
                                                               " is no longer configured; nothing was sent");
        }
        target_parts tp;
        if (!split_target(rec->target, tp)) {
            return std::nullopt;  // not routable: refused as such below
        }
        const auto rt = srv_.current_runtime();
        const auto* route = rt->cfg->find_route(rec->route);
        if (route == nullptr) {
            // Which rules (so which sandboxes) would judge it now cannot be told: fail
            // closed rather than read "no sandbox".
            return store::result::failure("invalid_state", "route " + rec->route + " of " + ticket +
                                                               " is no longer configured, so whether a sandbox "
                                                               "covers it now cannot be told: configure it again "
                                                               "to release it, or discard it; nothing was sent");
        }
        if (const auto by = sandbox_now(*rt, *route, *rec, tp, cfg.upstreams[upstream_index], srv_.now()); !by.empty()) {
            return store::result::failure("sandboxed", "breaker " + by +
                                                           " sandboxes this traffic now: reset it to release " +
                                                           ticket + ", or discard it; nothing was sent");
        }
        if (const auto a = std::find_if(cfg.agents.begin(), cfg.agents.end(),
                                        [&](const agent_config& c) { return c.id == rec->agent; });
            !rec->agent.empty() && a != cfg.agents.end()) {
            if (const auto why = scope_now(cfg, *a, *rec, tp, upstream_index); !why.empty()) {
                return store::result::failure("out_of_scope", "agent " + rec->agent + " may no longer send " +
                                                                  ticket + ": " + why +
                                                                  " (its allow list and constraints in the config "
                                                                  "now); widen them to release it, or discard it; "
                                                                  "nothing was sent");
            }
        }
        return std::nullopt;
    };
    auto cfg = srv_.current_config();
    if (auto no = refusal(*cfg)) {
        co_return std::move(*no);
    }
    target_parts tp;
    if (!split_target(rec->target, tp)) {
        co_return store::result::failure("invalid_state", "stored target of " + ticket + " is not routable");
    }
    // `releasing` is durable before a single byte goes out: a crash from here on leaves the
    // record for an operator (outcome_unknown), never for an automatic resend.
    auto begun = co_await await_store([&](store::done_fn done) {
        db_.begin_release(ticket, actor, force, std::move(done), expected, expected_attempts);
    });
    if (!begun.ok) {
        co_return begun;
    }
    cfg = srv_.current_config();
    if (auto no = refusal(*cfg)) {
        // Begun (durably `releasing`), not sent: recorded as a failed attempt with the reason,
        // to be released again once mended, or discarded. Said so, with the attempts (count,
        // as for any transition): a bulk release counts it failed, not skipped, for it is no
        // longer among the held records a rerun would list.
        auto refused = *no;
        refused.count = begun.count;
        auto recorded = co_await await_store([&](store::done_fn done) {
            db_.finish_release(ticket, store::release_outcome::failed, 0, refused.message, std::move(done),
                               static_cast<std::uint32_t>(begun.count));
        });
        // A record once of unknown outcome stays so (database::finish_release).
        const std::string why = refused.message;  // (what the record's history keeps)
        refused.message +=
            recorded.ok ? (recorded.code == "outcome_unknown"
                               ? " (the release had begun: recorded as a failed attempt; the record stays outcome_unknown)"
                               : " (the release had begun: recorded as a failed attempt, the record is release_failed)")
            : refused_for_now(recorded)
                ? " (the release had begun, and the store could not record the failed attempt yet: breakerbox records "
                  "it in the background; the record stays releasing until then)"
                : " (the release had begun, and the store refused to record the failed attempt: " + recorded.message +
                      ")";
        if (!recorded.ok) {
            spdlog::error("release of {}: refused after it began ({}), and the store did not record it: {}{}", ticket,
                          why, recorded.message, refused_for_now(recorded) ? "; trying again in the background" : "");
            if (refused_for_now(recorded)) {
                // As for a result after a send: else the record stays `releasing` and turns
                // outcome_unknown at the next start, though nothing was sent.
                unrecorded_.push_back({ticket, store::release_outcome::failed, 0, why,
                                       static_cast<std::uint32_t>(begun.count)});
                unrecorded_count_.store(unrecorded_.size(), std::memory_order_relaxed);
                start_recording_later();
            }
        }
        co_return refused;
    }
    const auto& up = cfg->upstreams[upstream_index];
    request req;
    req.method_string(rec->method);
    req.target(up.base_path.empty() || tp.origin_form == "*" ? std::string{tp.origin_form}
                                                             : up.base_path + std::string{tp.origin_form});
    req.version(11);
    for (const auto& [name, value] : rec->headers) {
        req.insert(name, value);
    }
    req.erase(http::field::host);
    req.set(http::field::host, up.authority);
    // The live path answers Expect itself and never forwards it; nobody waits for a 100 here.
    req.erase(http::field::expect);
    // The client's own key, when it sent one, is what the upstream de-duplicates on: a
    // client that retried a hold it never got the 202 for has two records with one key, and
    // both replays must carry it. Otherwise the ticket is the key.
    // (An empty key, which the hold did not treat as a key either, is replaced.)
    if (req[cfg->store.idempotency_header].empty()) {
        req.set(cfg->store.idempotency_header, ticket);
    }
    if (!rec->request_id.empty()) {
        req.set("x-request-id", rec->request_id);
    }
    req.set("x-breakerbox-ticket", ticket);
    req.body() = std::move(rec->body);
    req.keep_alive(true);
    req.prepare_payload();

    auto pool = pool_for(*cfg, upstream_index);
    exchange_result ex;
    const bool idempotent = req.method() == http::verb::get || req.method() == http::verb::head ||
                            req.method() == http::verb::options;
    // The route's response timeout when it has one (as the live request had), else the upstream's.
    const auto* route = cfg->find_route(rec->route);
    const auto timeout = route != nullptr && route->timeout.count() > 0 ? route->timeout : up.timeout;
    co_await pool->exchange(req, timeout, idempotent, req.method() == http::verb::head, ex);

    store::release_outcome outcome = store::release_outcome::released;
    int status = 0;
    std::string detail;
    switch (ex.failure) {
        case upstream_failure::none: {
            status = static_cast<int>(ex.res.result_int());
            detail = std::string{ex.res.reason()};
            // The upstream answered. A 4xx says it did not take the request: 401/403
            // (credentials that expired or changed while the request was held), 408, 409 (the
            // key in use by a request in flight), 425, 429, and the rest too (a 404 from a
            // base_path a reload got wrong, a 400 the upstream will never take): nothing was
            // delivered. So did a 503 with Retry-After (the server asking to come back).
            // Recorded release_failed, so the request stays for an operator to release again
            // (once the cause is mended) or discard, not resolved and pruned as if delivered.
            // A 2xx is delivered. Any other 5xx (500 after sending half a batch, 502/504 from
            // a gateway whose origin may have acted, and a bare 503: Envoy, in front of many
            // APIs, answers one for a connection reset after the request went through)
            // leaves the outcome unknown.
            // A 3xx (a moved endpoint, a login redirect) or a 1xx that ended the exchange did
            // not take it either: a redirect is never followed with a held request. Except
            // 303 See Other, the answer to a POST that was processed (see the result there),
            // and a 3xx no RFC defines: the request may have been acted on, so unknown (a
            // release_failed record is released again without force: a second send).
            // 301 and 302 to a POST are also how servers answer one they processed (the
            // post/redirect/get pattern, as common as 303): unknown for a method that is not
            // idempotent. 307 and 308 keep the method: the request belongs elsewhere.
            const bool moved = status == 300 || ((status == 301 || status == 302) && idempotent) || status == 304 ||
                               status == 305 || status == 307 || status == 308;
            const bool come_back = status == 503 && ex.res.find(http::field::retry_after) != ex.res.end();
            if (status < 200 || moved || (status >= 400 && status < 500) || come_back) {
                outcome = store::release_outcome::failed;
            } else if (status >= 500 || (status >= 300 && status < 400)) {
                outcome = store::release_outcome::unknown;
            } else {
                outcome = store::release_outcome::released;
            }
            break;
        }
        case upstream_failure::pool_exhausted:
        case upstream_failure::connect_failed:
        case upstream_failure::connect_timeout:
        case upstream_failure::tls_failed:
            outcome = store::release_outcome::failed;  // nothing was sent
            detail = ex.detail;
            break;
        case upstream_failure::over_budget:
            // Only a GET, HEAD or OPTIONS is refused for the response budget: it acted on
            // nothing, and may be released again.
            outcome = store::release_outcome::failed;
            detail = ex.detail;
            break;
        case upstream_failure::too_large:
            if (ex.dropped_status >= 200 && ex.dropped_status < 300) {
                // A 2xx whose body is over upstream_body_bytes: the status line says the
                // upstream took the request; only its answer was too large to keep.
                outcome = store::release_outcome::released;
                status = static_cast<int>(ex.dropped_status);
                detail = ex.detail;
                break;
            }
            [[fallthrough]];
        case upstream_failure::failed_after_send:
        case upstream_failure::timeout:
        case upstream_failure::bad_response:
        case upstream_failure::cancelled:
            outcome = store::release_outcome::unknown;  // it may have been acted on
            detail = ex.detail;
            break;
    }
    const auto attempts = static_cast<std::uint32_t>(begun.count);
    auto record = [&] {
        return await_store([&](store::done_fn done) {
            db_.finish_release(ticket, outcome, status, detail, std::move(done), attempts);
        });
    };
    // A refused write (the queue full under a flood of holds, a passing I/O error) is tried
    // again for about 3.5 s: else the record stays `releasing`, counts against the limits and
    // turns outcome_unknown at the next start although the upstream's answer is known.
    // Repeating is safe: it only moves a record still `releasing`. A stop ends the waiting.
    auto finished = co_await record();
    if (refused_for_now(finished)) {
        stoppable_timer wait{control_, pacers_};
        std::chrono::milliseconds backoff{100};
        for (int attempt = 0; attempt < 6 && refused_for_now(finished) && !stopping_; ++attempt) {
            spdlog::warn("release of {}: sent, recording the result failed ({}); trying again in {} ms", ticket,
                         finished.message, backoff.count());
            wait.timer.expires_after(backoff);
            co_await wait.timer.async_wait(use_tuple);
            backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds{1});
            finished = co_await record();
        }
    }
    if (!finished.ok) {
        // The request went out; only its result is not recorded. The record stays
        // `releasing` (nothing can release it again) while the result is tried again in the
        // background; a restart first turns it outcome_unknown. Saying "nothing was saved"
        // here would invite a second release.
        spdlog::error("release of {}: sent, the upstream answered {} but recording it failed: {}; trying again in "
                      "the background",
                      ticket, status != 0 ? std::to_string(status) : detail, finished.message);
        if (refused_for_now(finished)) {
            unrecorded_.push_back({ticket, outcome, status, detail, attempts});
            unrecorded_count_.store(unrecorded_.size(), std::memory_order_relaxed);
            start_recording_later();
        }
        store::result r;
        r.ok = false;
        r.ticket = ticket;
        r.count = status;
        r.code = "outcome_unknown";
        r.unrecorded = true;
        r.message = "sent to the upstream (" + (status != 0 ? std::to_string(status) : detail) +
                    ") but the result could not be recorded (" + finished.message +
                    "); the record stays releasing while breakerbox tries again to record it (outcome_unknown if it "
                    "restarts first): do not send it again";
        co_return r;
    }
    if (outcome == store::release_outcome::failed && finished.code == "outcome_unknown") {
        // The store keeps a record that was ever of unknown outcome so (database::finish_release).
        outcome = store::release_outcome::unknown;
        detail = finished.message;
    }
    spdlog::info("release of {} by {}: {} ({})", ticket, actor, store::to_string(store::state_after(outcome)),
                 status != 0 ? std::to_string(status) : detail);
    store::result r;
    r.ticket = ticket;
    r.count = status;
    if (outcome != store::release_outcome::released) {
        r.ok = false;
        r.code = std::string{store::to_string(store::state_after(outcome))};
        r.message = detail;
    }
    co_return r;
}

std::size_t remediation::record_left_over() {
    std::size_t left = 0;
    for (const auto& u : unrecorded_) {
        std::promise<store::result> done;
        auto f = done.get_future();
        db_.finish_release(u.ticket, u.outcome, u.status, u.detail,
                           [&done](const store::result& r) { done.set_value(r); }, u.attempts);
        if (refused_for_now(f.get())) {
            ++left;
        } else {
            spdlog::info("release of {}: result recorded at shutdown", u.ticket);
        }
    }
    unrecorded_.clear();
    unrecorded_count_.store(0, std::memory_order_relaxed);
    if (left > 0) {
        spdlog::warn("{} released request(s) have no recorded result; the next start turns them outcome_unknown",
                     left);
    }
    return left;
}

void remediation::start_recording_later() {
    if (recording_later_ || unrecorded_.empty() || stopping_) {
        return;
    }
    recording_later_ = true;
    // Ended however (done, stopped, an exception), the next unrecorded result starts it again.
    asio::co_spawn(control_, record_later(), [this](std::exception_ptr e) {
        recording_later_ = false;
        if (e) {
            spdlog::error("recording release results in the background stopped by an error; {} left",
                          unrecorded_.size());
        }
    });
}

asio::awaitable<void> remediation::record_later() {
    stoppable_timer wait{control_, pacers_};
    std::chrono::milliseconds backoff{1000};
    while (!unrecorded_.empty() && !stopping_) {
        wait.timer.expires_after(backoff);
        co_await wait.timer.async_wait(use_tuple);
        if (stopping_) {
            break;
        }
        // One at a time, in the order they went out. A result whose record moved on (its
        // release attempt is not the latest, it was resolved, or pruned) drops out.
        for (std::size_t i = 0; i < unrecorded_.size();) {
            const unrecorded_result u = unrecorded_[i];
            const auto r = co_await await_store([&](store::done_fn done) {
                db_.finish_release(u.ticket, u.outcome, u.status, u.detail, std::move(done), u.attempts);
            });
            if (refused_for_now(r)) {
                ++i;  // the store still refuses it: the next, then wait longer
                continue;
            }
            spdlog::info("release of {}: result recorded late: {}", u.ticket,
                         r.ok ? std::string{store::to_string(store::state_after(u.outcome))}
                              : r.code + " (" + r.message + ")");
            unrecorded_.erase(unrecorded_.begin() + static_cast<std::ptrdiff_t>(i));
            unrecorded_count_.store(unrecorded_.size(), std::memory_order_relaxed);
        }
        backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds{30});
    }
    if (!unrecorded_.empty()) {
        spdlog::warn("{} released request(s) still have no recorded result; the next start turns them outcome_unknown",
                     unrecorded_.size());
    }
}

release_pacer::time_point release_pacer::reserve(const std::string& upstream, double rate_per_s, time_point now) {
    // Forget upstreams whose schedule is in the past: they would start at `now` anyway.
    std::erase_if(next_, [&](const auto& e) { return e.second <= now; });
    const auto spacing = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(1.0 / rate_per_s));
    auto [it, added] = next_.try_emplace(upstream, now);
    const time_point slot = std::max(it->second, now);
    it->second = slot + spacing;
    return slot;
}

std::future<store::result> remediation::release(std::string ticket, std::string actor,
                                                std::optional<std::uint32_t> forced_attempts) {
    return spawn_future<store::result>(control_, [&] {
        return release_one(std::move(ticket), std::move(actor), forced_attempts.has_value(), std::nullopt,
                           forced_attempts);
    });
}

std::future<remediation_summary> remediation::release_matching(store::list_filter filter, double rate_per_s,
                                                               std::string actor) {
    // The coroutine is a member function taking its arguments by value, so they live in its
    // frame: a coroutine lambda's captures would die with the lambda object.
    return spawn_future<remediation_summary>(control_, [&] {
        return release_matching_impl(std::move(filter), rate_per_s, std::move(actor));
    });
}

asio::awaitable<remediation_summary> remediation::release_matching_impl(store::list_filter filter, double rate_per_s,
                                                                        std::string actor) {
    {
        remediation_summary sum;
        const std::size_t limit = filter.limit;
        if (!snapshot(filter, &sum.error)) {
            co_return sum;
        }
        stoppable_timer paced{control_, pacers_};
        asio::steady_timer& pacer = paced.timer;
        std::size_t refused_once_begun = 0;  // counted failed, but nothing was sent: not in `limit`
        // Upstreams the run halted at (a 429, unreachable, an unknown outcome): their later
        // records stay held, while records bound to other upstreams go on. A halt of the
        // store's (busy, a result not recorded) stops the whole run.
        std::set<std::string, std::less<>> halted_upstreams;
        std::int64_t after = 0;
        for (;;) {
            const auto page = next_page(filter, after, &sum.error);
            if (page.empty()) {
                break;
            }
            for (const auto& rec : page) {
                // `limit` bounds what is sent: a record skipped (changed since it was listed)
                // does not use it up, so a canary of 1 sends one if any is left.
                if (stopping_ || (limit > 0 && sum.released + sum.failed + sum.unknown - refused_once_begun == limit)) {
                    sum.stopped = stopping_;
                    co_return sum;
                }
                if (halted_upstreams.contains(rec.upstream)) {
                    continue;  // left held, not looked at: released again once that upstream recovers
                }
                if (rate_per_s > 0) {
                    const auto now = std::chrono::steady_clock::now();
                    if (const auto slot = schedule_.reserve(rec.upstream, rate_per_s, now); slot > now) {
                        pacer.expires_at(slot);
                        co_await pacer.async_wait(use_tuple);
                        if (stopping_) {  // the server stops: what is not sent yet stays held
                            sum.stopped = true;
                            co_return sum;
                        }
                    }
                }
                ++sum.matched;
                // Only in the state it was listed in: a record that failed or went unknown
                // since (another release) is an operator's to look at again, not resent here.
                // And with the attempts it was listed with: one another release sent since,
                // failed again, is not resent on a listing made before that.
                auto r = co_await release_one(rec.ticket, actor, false, rec.state, rec.release_attempts);
                // The run stops at this record (its result is the last); the rest stays held.
                auto halt = [&](std::string why) {
                    spdlog::warn("bulk release by {} halted: {}", actor, why);
                    sum.halted += (sum.halted.empty() ? "" : "; ") + why;
                    sum.results.push_back(std::move(r));
                };
                // Only this upstream's records stop here; the run goes on with the others.
                auto halt_upstream = [&](std::string why) {
                    halt(std::move(why));
                    halted_upstreams.insert(rec.upstream);
                };
                if (r.ok) {
                    ++sum.released;
                } else if (r.code == "release_failed") {
                    ++sum.failed;
                    if (r.count == 429 || r.count == 503) {
                        // The upstream asks to slow down (rate limit, overload with Retry-After): the rest
                        // would fail the same way, each using an attempt. Left held.
                        halt_upstream("upstream " + rec.upstream + " answered " + std::to_string(r.count) + " to " +
                                      rec.ticket + "; its records after it stay as they are: release them again once "
                                      "its limit resets (a lower rate_per_s may help)");
                        continue;
                    }
                    if (r.count == 0) {
                        // No answer and nothing sent: the upstream could not be reached (refused,
                        // a TLS failure, our own pool full). The rest would meet the same, each
                        // turned release_failed, and a second run of this filter would find none
                        // of them held. Left held.
                        halt_upstream("upstream " + rec.upstream + " could not be reached for " + rec.ticket + " (" +
                                      r.message + "); nothing of it was sent, and its records after it stay as they "
                                      "are: release them again once it can be reached");
                        continue;
                    }
                } else if (r.code == "outcome_unknown") {
                    // Perhaps delivered, perhaps not (a gateway's 502, 503 or 504, a timeout, a
                    // connection lost after the send): the rest would most likely meet the same,
                    // and each would be one more record an operator must decide on by hand (a
                    // forced release may send it twice). Left held.
                    ++sum.unknown;
                    if (r.unrecorded) {
                        // The upstream answered; the store did not take the result.
                        halt("the replay of " + rec.ticket + " was sent to upstream " + rec.upstream +
                             " but the store could not record its result (" + r.message +
                             "); the records after it stay as they are: release them again once the store records "
                             "again");
                        co_return sum;
                    }
                    const std::string what =
                        r.count > 0 ? "answered " + std::to_string(r.count) : std::string{"gave no complete answer"};
                    halt_upstream("upstream " + rec.upstream + " " + what + " to " + rec.ticket +
                                  " (outcome unknown); its records after it stay as they are: release them again "
                                  "once it recovers");
                    continue;
                } else if (r.code == "store_busy") {
                    // The store's writer is full: the rest would be refused the same way
                    // (nothing of them sent). Left held. (A record that cannot be read,
                    // store_unavailable, is skipped: one damaged record must not block all.)
                    ++sum.skipped;
                    halt("the store is busy (" + r.message + ") at " + rec.ticket +
                         "; nothing of it was sent, and the records after it stay as they are: release them again in "
                         "a moment");
                    co_return sum;
                } else if (r.count > 0) {
                    ++sum.failed;  // refused once begun: an attempt recorded as failed, nothing sent
                    ++refused_once_begun;
                } else {
                    ++sum.skipped;
                }
                sum.results.push_back(std::move(r));
            }
        }
        co_return sum;
    }
}

std::future<store::result> remediation::discard(std::string ticket, std::string actor, std::string reason) {
    return spawn_future<store::result>(control_, [&] {
        return discard_one(std::move(ticket), std::move(actor), std::move(reason));
    });
}

asio::awaitable<store::result> remediation::discard_one(std::string ticket, std::string actor, std::string reason) {
    co_return co_await await_store([&](store::done_fn done) { db_.discard(ticket, actor, reason, std::move(done)); });
}

std::future<remediation_summary> remediation::discard_matching(store::list_filter filter, std::string actor,
                                                               std::string reason) {
    return spawn_future<remediation_summary>(control_, [&] {
        return discard_matching_impl(std::move(filter), std::move(actor), std::move(reason));
    });
}

asio::awaitable<remediation_summary> remediation::discard_matching_impl(store::list_filter filter, std::string actor,
                                                                        std::string reason) {
    {
        remediation_summary sum;
        const std::size_t limit = filter.limit;
        if (!snapshot(filter, &sum.error)) {
            co_return sum;
        }
        std::int64_t after = 0;
        for (;;) {
            const auto page = next_page(filter, after, &sum.error);
            if (page.empty()) {
                break;
            }
            for (const auto& rec : page) {
                if (limit > 0 && sum.discarded == limit) {
                    co_return sum;
                }
                if (stopping_) {  // the server stops: a shutdown does not wait for the rest
                    sum.stopped = true;
                    co_return sum;
                }
                ++sum.matched;
                auto r = co_await await_store(
                    [&](store::done_fn done) { db_.discard(rec.ticket, actor, reason, std::move(done), rec.state); });
                if (r.ok) {
                    ++sum.discarded;
                } else if (r.code == "store_busy") {
                    // The store's writer is full: the rest would be refused the same way, one
                    // by one. Nothing of this record changed; the run stops, said as a halt,
                    // not as records skipped. (store_unavailable, a record that cannot be
                    // read, is skipped, as a bulk release skips it.)
                    ++sum.skipped;
                    const std::string why = "the store is busy (" + r.message + ") at " + rec.ticket +
                                            "; it and the records after it are as they were: discard them again "
                                            "in a moment";
                    spdlog::warn("bulk discard by {} halted: {}", actor, why);
                    sum.halted = why;
                    sum.results.push_back(std::move(r));
                    co_return sum;
                } else {
                    ++sum.skipped;
                }
                sum.results.push_back(std::move(r));
            }
        }
        co_return sum;
    }
}

}  // namespace bb::proxy
