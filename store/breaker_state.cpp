#include "store/breaker_state.hpp"

#include "core/json_reader.hpp"

#include <simdjson.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

namespace bb::store {

namespace {

std::int64_t to_wall_ms(time_point t, const clock& c) {
    const auto now = c.now();
    const auto wall = c.wall_now() - std::chrono::duration_cast<std::chrono::system_clock::duration>(now - t);
    return std::chrono::duration_cast<std::chrono::milliseconds>(wall.time_since_epoch()).count();
}

time_point from_wall_ms(std::int64_t ms, const clock& c) {
    const auto wall = std::chrono::system_clock::time_point{std::chrono::milliseconds{ms}};
    return c.now() - std::chrono::duration_cast<duration>(c.wall_now() - wall);
}

std::optional<breakers::state> parse_state(std::string_view s) {
    if (s == "closed") {
        return breakers::state::closed;
    }
    if (s == "open") {
        return breakers::state::open;
    }
    if (s == "half_open") {
        return breakers::state::half_open;
    }
    return std::nullopt;
}

void field(std::string& out, std::string_view name, std::string_view value) {
    out += cfg::quote(name);
    out += ':';
    out += cfg::quote(value);
    out += ',';
}

void field(std::string& out, std::string_view name, std::int64_t value) {
    out += cfg::quote(name);
    out += ':';
    out += std::to_string(value);
    out += ',';
}

void field(std::string& out, std::string_view name, double value) {
    std::ostringstream ss;
    ss.precision(17);
    ss << value;
    out += cfg::quote(name);
    out += ':';
    out += ss.str();
    out += ',';
}

void close_object(std::string& out) {
    if (out.back() == ',') {
        out.back() = '}';
    } else {
        out += '}';
    }
}

}  // namespace

std::string breaker_state_to_json(const std::vector<breakers::instance_snapshot>& instances, const clock& c) {
    std::string out = "{\"version\":1,\"instances\":[";
    bool first = true;
    for (const auto& i : instances) {
        if (i.at_rest()) {
            continue;  // the default needs no record
        }
        if (!first) {
            out += ',';
        }
        first = false;
        out += '{';
        field(out, "instance", i.instance);
        field(out, "breaker", i.breaker);
        field(out, "key", i.key);
        field(out, "state", breakers::to_string(i.st));
        field(out, "mode", breakers::to_string(i.md));
        if (i.mode_expires) {
            field(out, "mode_expires_ms", to_wall_ms(*i.mode_expires, c));
        }
        field(out, "opened_at_ms", to_wall_ms(i.opened_at, c));
        field(out, "cooldown_ms", static_cast<std::int64_t>(i.cooldown.count()));
        field(out, "trips", static_cast<std::int64_t>(i.trips));
        if (i.last_trip) {
            const auto& t = *i.last_trip;
            out += "\"last_trip\":{";
            field(out, "kind", t.cause.kind);
            field(out, "actor", t.cause.actor);
            field(out, "reason", t.cause.reason);
            field(out, "rule", t.cause.rule);
            field(out, "key", t.cause.key);
            field(out, "value", t.cause.value);
            field(out, "limit", t.cause.limit);
            field(out, "window_ms", static_cast<std::int64_t>(t.cause.window.count()));
            field(out, "request_id", t.cause.request_id);
            field(out, "at_ms", to_wall_ms(t.at, c));
            close_object(out);
        }
        close_object(out);
    }
    out += "]}\n";
    return out;
}

std::optional<std::vector<breakers::instance_snapshot>> breaker_state_from_json(std::string_view json, const clock& c,
                                                                                std::string* error) {
    simdjson::dom::parser parser;
    simdjson::padded_string padded{json};
    simdjson::dom::element doc;
    if (auto err = parser.parse(padded).get(doc); err) {
        *error = std::string{"not valid JSON: "} + simdjson::error_message(err);
        return std::nullopt;
    }
    std::vector<breakers::instance_snapshot> out;
    simdjson::dom::array arr;
    if (doc["instances"].get(arr) != simdjson::SUCCESS) {
        *error = "no \"instances\" array";
        return std::nullopt;
    }
    std::size_t idx = 0;
    for (auto e : arr) {
        breakers::instance_snapshot s;
        std::string_view sv;
        std::int64_t n = 0;
        auto need_str = [&](const char* k, std::string& dst) {
            if (e[k].get(sv) != simdjson::SUCCESS) {
                *error = "instances[" + std::to_string(idx) + "]." + k + " is missing";
                return false;
            }
            dst = std::string{sv};
            return true;
        };
        std::string st;
        std::string md;
        if (!need_str("instance", s.instance) || !need_str("breaker", s.breaker) || !need_str("key", s.key) ||
            !need_str("state", st) || !need_str("mode", md)) {
            return std::nullopt;
        }
        auto ps = parse_state(st);
        auto pm = breakers::parse_mode(md);
        if (!ps || !pm) {
            *error = "instances[" + std::to_string(idx) + "] has an unknown state or mode";
            return std::nullopt;
        }
        s.st = *ps;
        s.md = *pm;
        if (e["mode_expires_ms"].get(n) == simdjson::SUCCESS) {
            s.mode_expires = from_wall_ms(n, c);
        }
        if (e["opened_at_ms"].get(n) == simdjson::SUCCESS) {
            s.opened_at = from_wall_ms(n, c);
        }
        if (e["cooldown_ms"].get(n) == simdjson::SUCCESS) {
            s.cooldown = std::chrono::milliseconds{n};
        }
        if (e["trips"].get(n) == simdjson::SUCCESS) {
            s.trips = static_cast<std::uint64_t>(n);
        }
        simdjson::dom::element lt;
        if (e["last_trip"].get(lt) == simdjson::SUCCESS) {
            auto t = std::make_shared<breakers::transition>();
            t->instance = s.instance;
            t->breaker = s.breaker;
            t->to = s.st;
            t->mode_to = s.md;
            auto str = [&](const char* k) {
                std::string_view v;
                return lt[k].get(v) == simdjson::SUCCESS ? std::string{v} : std::string{};
            };
            auto num = [&](const char* k) {
                double v = 0;
                if (lt[k].get(v) != simdjson::SUCCESS) {
                    std::int64_t i = 0;
                    if (lt[k].get(i) == simdjson::SUCCESS) {
                        v = static_cast<double>(i);
                    }
                }
                return v;
            };
            t->cause.kind = str("kind");
            t->cause.actor = str("actor");
            t->cause.reason = str("reason");
            t->cause.rule = str("rule");
            t->cause.key = str("key");
            t->cause.value = num("value");
            t->cause.limit = num("limit");
            t->cause.window = std::chrono::milliseconds{static_cast<std::int64_t>(num("window_ms"))};
            t->cause.request_id = str("request_id");
            t->at = from_wall_ms(static_cast<std::int64_t>(num("at_ms")), c);
            s.last_trip = std::move(t);
        }
        out.push_back(std::move(s));
        ++idx;
    }
    return out;
}

std::string write_file_durably(const std::string& path, std::string_view data) {
    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        return "cannot create " + tmp + ": " + std::strerror(errno);
    }
    std::size_t off = 0;
    while (off < data.size()) {
        const auto n = ::write(fd, data.data() + off, data.size() - off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            const std::string e = std::strerror(errno);
            ::close(fd);
            return "cannot write " + tmp + ": " + e;
        }
        off += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0) {
        const std::string e = std::strerror(errno);
        ::close(fd);
        return "cannot fsync " + tmp + ": " + e;
    }
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        return "cannot rename " + tmp + " to " + path + ": " + std::strerror(errno);
    }
    // The rename is only durable once the directory entry is.
    const auto slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        return "cannot open directory " + dir + ": " + std::strerror(errno);
    }
    const int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    if (rc != 0) {
        return "cannot fsync directory " + dir + ": " + std::strerror(err);
    }
    return {};
}

std::optional<std::vector<breakers::instance_snapshot>> load_breaker_state(const std::string& path, const clock& c,
                                                                           std::string* error) {
    std::ifstream in{path, std::ios::binary};
    if (!in) {
        struct stat st{};
        if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) {
            return std::vector<breakers::instance_snapshot>{};
        }
        *error = "cannot read " + path;
        return std::nullopt;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    std::string why;
    auto parsed = breaker_state_from_json(ss.str(), c, &why);
    if (!parsed) {
        *error = path + ": " + why;
    }
    return parsed;
}

breaker_state_writer::breaker_state_writer(std::string path, snapshot_fn snapshot, const clock& c)
    : breaker_state_writer(path, std::move(snapshot), nullptr, c) {}

breaker_state_writer::breaker_state_writer(std::string path, snapshot_fn snapshot, sink_fn sink, const clock& c)
    : path_(std::move(path)), snapshot_(std::move(snapshot)), sink_(std::move(sink)), clock_(c) {
    if (!sink_) {
        sink_ = [this](std::vector<breakers::instance_snapshot> instances) {
            return write_file_durably(path_, breaker_state_to_json(instances, clock_));
        };
    }
    thread_ = std::thread{[this] { run(); }};
}

breaker_state_writer::~breaker_state_writer() {
    flush();
    {
        std::lock_guard lock{mu_};
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

void breaker_state_writer::request(std::function<void(bool)> done) {
    {
        std::lock_guard lock{mu_};
        ++requested_;
        if (done) {
            waiting_.push_back(std::move(done));
        }
    }
    cv_.notify_all();
}

bool breaker_state_writer::flush() {
    std::unique_lock lock{mu_};
    paused_ = false;  // a flush (shutdown) writes whatever a test paused
    cv_.notify_all();
    const auto target = requested_;
    cv_.wait(lock, [&] { return completed_ >= target || stop_; });
    return last_ok_;
}

void breaker_state_writer::pause(bool on) {
    {
        std::lock_guard lock{mu_};
        paused_ = on;
    }
    cv_.notify_all();
}

std::uint64_t breaker_state_writer::writes() const {
    std::lock_guard lock{mu_};
    return writes_;
}

std::string breaker_state_writer::last_error() const {
    std::lock_guard lock{mu_};
    return last_error_;
}

bool breaker_state_writer::failing() const {
    std::lock_guard lock{mu_};
    return !last_ok_;
}

void breaker_state_writer::on_failure(std::function<void(const std::string&)> f) {
    std::lock_guard lock{mu_};
    on_failure_ = std::move(f);
}

void breaker_state_writer::on_recovery(std::function<void()> f) {
    std::lock_guard lock{mu_};
    on_recovery_ = std::move(f);
}

void breaker_state_writer::run() {
    std::unique_lock lock{mu_};
    // After a failed write the state on disk is stale (a tripped breaker could come back
    // closed after a restart), so the writer tries again by itself, backing off from 100 ms
    // to 10 s, until a write succeeds — not only when the next transition asks for one.
    std::chrono::milliseconds backoff{100};
    for (;;) {
        if (last_ok_ || stop_) {
            cv_.wait(lock, [&] { return stop_ || (requested_ > completed_ && !paused_); });
        } else if (!cv_.wait_for(lock, backoff, [&] { return stop_ || (requested_ > completed_ && !paused_); })) {
            if (paused_) {
                continue;
            }
            ++requested_;  // the retry: nothing new asked for, the last write failed
            backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds{10});
        }
        if (requested_ <= completed_ && stop_) {
            return;
        }
        // Everything requested up to now is covered by the snapshot taken below.
        const auto covering = requested_;
        auto done = std::move(waiting_);
        waiting_.clear();
        lock.unlock();
        const std::string err = sink_(snapshot_());
        for (auto& d : done) {
            d(err.empty());
        }
        lock.lock();
        if (!err.empty() && on_failure_) {
            auto report = on_failure_;
            lock.unlock();
            report(err);
            lock.lock();
        } else if (err.empty() && !last_ok_ && on_recovery_) {
            auto report = on_recovery_;
            lock.unlock();
            report();
            lock.lock();
        }
        ++writes_;
        last_ok_ = err.empty();
        last_error_ = err;
        if (last_ok_) {
            backoff = std::chrono::milliseconds{100};
        }
        completed_ = covering;
        cv_.notify_all();
    }
}

}  // namespace bb::store
