// breakerbox --config FILE [--log-level LEVEL]
// breakerbox --check-config FILE
#include "config/config.hpp"
#include "proxy/admin.hpp"
#include "proxy/server.hpp"

#include <spdlog/spdlog.h>

#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

namespace {

constexpr const char* usage =
    "usage: breakerbox --config FILE [--log-level trace|debug|info|warn|error|critical|off]\n"
    "       breakerbox --check-config FILE\n"
    "       breakerbox --version\n";

int check_config(const std::string& path) {
    auto parsed = bb::load_config_file(path, nullptr, true);
    if (parsed.errors.empty()) {
        // What a start builds beyond the reading: TLS contexts from the certificate files and
        // a forward proxy's CA. A deploy gate passing a config the start then refuses would
        // let through a crash loop. (Not the access log: whether it can be written depends
        // on who runs the check and where, not on the file; the start says so itself.)
        bb::config none;
        none.log.access_log = parsed.cfg->log.access_log;
        bb::proxy::server::check_tls_change(none, *parsed.cfg, parsed.errors);
    }
    if (!parsed.errors.empty()) {
        std::cerr << path << ": " << parsed.errors.size() << " error(s)\n";
        for (const auto& e : parsed.errors.list()) {
            std::cerr << e.to_string() << '\n';
        }
        return 1;
    }
    std::cout << path << ": ok (" << parsed.cfg->listeners.size() << " listener(s), " << parsed.cfg->upstreams.size()
              << " upstream(s), " << parsed.cfg->routes.size() << " route(s))\n";
    for (const auto& w : parsed.warnings) {
        std::cout << "warning: " << w << '\n';
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::string config_path;
    std::string check_path;
    std::string log_level;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&](const char* name) -> std::string {
            if (i + 1 >= argc) {
                std::cerr << "breakerbox: " << name << " needs a value\n" << usage;
                std::exit(2);
            }
            return argv[++i];
        };
        if (arg == "--config") {
            config_path = value("--config");
        } else if (arg == "--check-config") {
            check_path = value("--check-config");
        } else if (arg == "--log-level") {
            log_level = value("--log-level");
        } else if (arg == "--version") {
            std::cout << "breakerbox 0.1.0\n";
            return 0;
        } else if (arg == "--help" || arg == "-h") {
            std::cout << usage;
            return 0;
        } else {
            std::cerr << "breakerbox: unknown argument " << arg << "\n" << usage;
            return 2;
        }
    }
    if (!check_path.empty()) {
        return check_config(check_path);
    }
    if (config_path.empty()) {
        std::cerr << usage;
        return 2;
    }
    std::optional<std::string> text;
    auto parsed = bb::load_config_file(config_path, &text, true);
    if (!parsed.errors.empty() && text) {
        // A file that ran before an upgrade added a check (cfg::errors::add_since_stored)
        // starts as it ran, the check's findings logged as warnings: an upgrade must not
        // turn an unchanged config into a restart loop. --check-config, SIGHUP and the
        // admin API still refuse it, so the next change mends it.
        if (auto lenient = bb::parse_config(*text, true); lenient.errors.empty()) {
            parsed = std::move(lenient);
        }
    }
    if (!parsed.errors.empty()) {
        std::cerr << "breakerbox: " << config_path << ": " << parsed.errors.size() << " error(s)\n";
        for (const auto& e : parsed.errors.list()) {
            std::cerr << e.to_string() << '\n';
        }
        return 1;
    }
    const std::string level = log_level.empty() ? parsed.cfg->log.level : log_level;
    if (spdlog::level::from_str(level) == spdlog::level::off && level != "off") {
        std::cerr << "breakerbox: --log-level " << level << " is not a level\n" << usage;
        return 2;
    }
    // Until start() registers the server's handlers, SIGHUP's default action would end the
    // process (a renewal hook or `systemctl reload` during a restart; systemd takes that for
    // a clean exit and does not restart it), and SIGTERM would skip the drain and the final
    // saves. Blocked here, before any thread starts (each inherits the mask), and taken from
    // the queue once the handlers are registered.
    sigset_t startup_signals;
    sigemptyset(&startup_signals);
    for (const int s : {SIGHUP, SIGINT, SIGTERM}) {
        sigaddset(&startup_signals, s);
    }
    pthread_sigmask(SIG_BLOCK, &startup_signals, nullptr);
    bb::proxy::init_logging(level);
    for (const auto& w : parsed.warnings) {
        spdlog::warn("config: {}", w);
    }
    // A config applied through the admin API after the file was last read survives a
    // restart while the file is unchanged.
    const auto from_file = parsed.cfg;
    std::int64_t from_version = 0;
    std::signal(SIGPIPE, SIG_IGN);
    try {
        parsed.cfg = bb::proxy::choose_startup_config(config_path, parsed.cfg, &from_version);
        int rc = 0;
        {
            // The server goes (and writes out its logs) before spdlog's log thread does.
            bb::proxy::server_options opts;
            opts.config_path = config_path;
            opts.config_from_version = from_version;
            std::unique_ptr<bb::proxy::server> owned;
            try {
                owned = std::make_unique<bb::proxy::server>(parsed.cfg, opts);
                owned->start();
            } catch (const std::exception& e) {
                if (from_version == 0) {
                    throw;
                }
                // What the API changed of the settings fixed until a restart (listeners, the
                // admin address...) is tried for the first time here; a version that cannot
                // start must not keep every restart down while the file can.
                spdlog::error("config: version {} cannot start ({}); starting from {} instead, which undoes it",
                              from_version, e.what(), config_path);
                owned.reset();
                parsed.cfg = from_file;
                opts.config_from_version = 0;
                owned = std::make_unique<bb::proxy::server>(parsed.cfg, opts);
                owned->start();
            }
            pthread_sigmask(SIG_UNBLOCK, &startup_signals, nullptr);
            auto& srv = *owned;
            for (std::size_t i = 0; i < parsed.cfg->listeners.size(); ++i) {
                const auto& l = parsed.cfg->listeners[i];
                const bool v6 = l.host.find(':') != std::string::npos;
                // Always printed, whatever the log level: it says where to send traffic.
                std::printf("breakerbox: listener %s on %s://%s%s%s:%u (%zu worker(s))%s\n", l.name.c_str(),
                            l.tls ? "https" : "http", v6 ? "[" : "", l.host.c_str(), v6 ? "]" : "",
                            static_cast<unsigned>(srv.bound_port(i)), srv.worker_count(),
                            l.forward_proxy ? ", forward proxy: set HTTP_PROXY/HTTPS_PROXY to it" : "");
            }
            if (srv.admin_port() != 0) {
                const auto& a = parsed.cfg->admin;
                std::printf("breakerbox: admin API on %s://%s:%u\n", a.tls ? "https" : "http", a.host.c_str(),
                            static_cast<unsigned>(srv.admin_port()));
            }
            std::fflush(stdout);
            rc = srv.run();
        }
        spdlog::info("stopped");
        spdlog::shutdown();  // drain the asynchronous logs before exiting
        return rc;
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        spdlog::shutdown();
        return 1;
    }
}
