// The real `breakerbox` binary as a child process: --check-config, SIGHUP reload with a bad
// and a good config, SIGTERM drain, and an fd-leak check over 10,000 mixed requests.
// Waits are reads with deadlines (poll), never sleeps.
#include "tests/support/fake_upstream.hpp"
#include "tests/support/proxy_fixture.hpp"
#include "tests/support/sqlite_exec.hpp"

#include <gtest/gtest.h>

#include <boost/beast/http/write.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "store/database.hpp"

#include <sqlite3.h>

#include <openssl/evp.h>

extern char** environ;

using namespace bb::test;
using namespace std::chrono_literals;
namespace http = boost::beast::http;

#ifndef BB_BREAKERBOX_BIN
#error "BB_BREAKERBOX_BIN must name the breakerbox binary"
#endif

namespace {

void write_file(const std::string& path, const std::string& text) {
    std::ofstream out{path, std::ios::trunc};
    out << text;
}

// A child process with its stdout+stderr on a pipe.
class child {
public:
    explicit child(std::vector<std::string> args) {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) {
            throw std::runtime_error("pipe failed");
        }
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
        posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
        std::vector<char*> argv;
        argv.push_back(const_cast<char*>(BB_BREAKERBOX_BIN));
        for (auto& a : args) {
            argv.push_back(a.data());
        }
        argv.push_back(nullptr);
        if (posix_spawn(&pid_, BB_BREAKERBOX_BIN, &fa, nullptr, argv.data(), environ) != 0) {
            throw std::runtime_error("spawn failed");
        }
        posix_spawn_file_actions_destroy(&fa);
        ::close(fds[1]);
        out_ = fds[0];
    }
    ~child() {
        if (pid_ > 0 && !exited_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        ::close(out_);
    }
    pid_t pid() const { return pid_; }

    // Reads output until `pattern` matches somewhere in it, or the deadline passes.
    std::smatch wait_output(const std::string& pattern, std::chrono::milliseconds deadline = 10s) {
        const std::regex re{pattern};
        const auto until = std::chrono::steady_clock::now() + deadline;
        for (;;) {
            std::smatch m;
            if (std::regex_search(text_.cbegin() + static_cast<long>(consumed_), text_.cend(), m, re)) {
                consumed_ = static_cast<std::size_t>(m[0].second - text_.cbegin());
                return m;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
            if (left.count() <= 0 || !read_some(left)) {
                ADD_FAILURE() << "no output matching /" << pattern << "/ within the deadline; output so far:\n" << text_;
                return {};
            }
        }
    }
    // Waits for exit; returns the exit status, or -1 on timeout.
    int wait_exit(std::chrono::milliseconds deadline = 10s) {
        const auto until = std::chrono::steady_clock::now() + deadline;
        for (;;) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                exited_ = true;
                while (read_some(0ms)) {
                }
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
            if (left.count() <= 0) {
                return -1;
            }
            // The pipe closes when the child exits: wait on it rather than sleeping.
            if (!read_some(std::min(left, std::chrono::milliseconds{50}))) {
                pollfd none{};
                ::poll(&none, 0, 5);
            }
        }
    }
    const std::string& output() const { return text_; }

private:
    bool read_some(std::chrono::milliseconds timeout) {
        pollfd p{out_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) {
            return false;
        }
        char buf[4096];
        const auto n = ::read(out_, buf, sizeof buf);
        if (n <= 0) {
            return false;
        }
        text_.append(buf, static_cast<std::size_t>(n));
        return true;
    }

    pid_t pid_ = -1;
    int out_ = -1;
    bool exited_ = false;
    std::string text_;
    std::size_t consumed_ = 0;
};

std::string sha256_hex_of(std::string_view s) {
    unsigned char d[32];
    unsigned int n = 0;
    EVP_Digest(s.data(), s.size(), d, &n, EVP_sha256(), nullptr);
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    for (int i = 0; i < 32; ++i) {
        out += hex[d[i] >> 4];
        out += hex[d[i] & 0xf];
    }
    return out;
}

std::uint16_t started_port(child& c) {
    auto m = c.wait_output(R"(listener \S+ on http://127\.0\.0\.1:(\d+))");
    return m.empty() ? 0 : static_cast<std::uint16_t>(std::stoi(m[1].str()));
}

std::size_t open_fds(pid_t pid) {
    std::size_t n = 0;
    DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
    if (d == nullptr) {
        return 0;
    }
    while (auto* e = ::readdir(d)) {
        if (e->d_name[0] != '.') {
            ++n;
        }
    }
    ::closedir(d);
    return n;
}

// A config with its store in `dir` and an admin API with one admin token, "admin-token".
std::string with_admin_api(std::string cfg, const std::string& dir) {
    cfg.insert(cfg.rfind('}'), ", \"store\": {\"path\": \"" + dir + "/bb.db\"},"
                               "\"admin\": {\"address\": \"127.0.0.1:0\", \"tokens\": ["
                               "{\"name\": \"ada\", \"role\": \"admin\", \"sha256\": \"" + sha256_hex_of("admin-token") + "\"}]}");
    return cfg;
}

}  // namespace

TEST(check_config, valid_file_exits_0) {
    const auto dir = temp_dir();
    write_file(dir + "/ok.json", make_config("http://127.0.0.1:9"));
    child c{{"--check-config", dir + "/ok.json"}};
    EXPECT_EQ(c.wait_exit(), 0) << c.output();
    EXPECT_NE(c.output().find(": ok"), std::string::npos) << c.output();
}

TEST(check_config, every_error_is_listed_with_its_json_path) {
    const auto dir = temp_dir();
    write_file(dir + "/bad.json", R"({
      "workers": -1,
      "listeners": [{"name": "a", "address": "nope"}],
      "limits": {"body_bytes": "big", "header_timeout": "1x"},
      "upstreams": [{"name": "up", "url": "ftp://x", "timeout": "1x"}],
      "routes": [{"name": "r", "match": {"path_prefix": "v3"}, "upstream": "missing"}],
      "limts": {}
    })");
    child c{{"--check-config", dir + "/bad.json"}};
    EXPECT_EQ(c.wait_exit(), 1);
    const auto& out = c.output();
    for (const char* expected : {
             "workers: -1 is out of range",
             "listeners[0].address: \"nope\" is not an address",
             "limits.body_bytes: must be a whole number",
             "limits.header_timeout: \"1x\" is not a duration",
             "upstreams[0].url: \"ftp://x\": scheme must be http or https",
             "upstreams[0].timeout: \"1x\" is not a duration",
             "routes[0].match.path_prefix: \"v3\" must start with /",
             "routes[0].upstream: \"missing\" is not a configured upstream",
             "limts: is not a known setting",
         }) {
        EXPECT_NE(out.find(expected), std::string::npos) << "missing error: " << expected << "\nin:\n" << out;
    }
}

// What the start builds beyond the reading is checked too: a key that is not the
// certificate's and a forward proxy's CA that cannot sign were "ok" here and then stopped
// the start.
TEST(check_config, files_the_start_could_not_load_are_errors) {
    const auto dir = temp_dir();
    const std::string certs = BB_TEST_CERTS_DIR;
    auto config = [&](const std::string& key, const std::string& ca_key) {
        return R"({"listeners": [{"name": "tls", "address": "127.0.0.1:0", "tls": {"cert_file": ")" + certs +
               R"(/server.pem", "key_file": ")" + certs + "/" + key + R"("}},
            {"name": "fwd", "address": "127.0.0.1:0", "forward_proxy": {"ca_cert_file": ")" + certs +
               R"(/ca.pem", "ca_key_file": ")" + certs + "/" + ca_key + R"("}}],
            "upstreams": [{"name": "up", "url": "http://127.0.0.1:9"}],
            "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up"}]})";
    };
    write_file(dir + "/good.json", config("server.key", "ca.key"));
    child good{{"--check-config", dir + "/good.json"}};
    EXPECT_EQ(good.wait_exit(), 0) << good.output();
    write_file(dir + "/bad.json", config("agent-agent-one.key", "ca.cnf"));
    child bad{{"--check-config", dir + "/bad.json"}};
    EXPECT_EQ(bad.wait_exit(), 1);
    EXPECT_NE(bad.output().find("listeners[0].tls: "), std::string::npos) << bad.output();
    EXPECT_NE(bad.output().find("listeners[1].forward_proxy: "), std::string::npos) << bad.output();
}

// A file that ran before an upgrade added a check (here: the health settings the README's
// own example once carried, which do nothing) starts as it ran, with the findings as
// warnings, instead of a restart loop; --check-config still lists them, to be mended.
TEST(startup, a_file_that_ran_before_a_newer_check_still_starts) {
    const auto dir = temp_dir();
    const auto path = dir + "/bb.json";
    write_file(path, R"({"listeners": [{"name": "main", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "up", "url": "http://127.0.0.1:9", "health": {"consecutive_failures": 5,
            "failure_ratio": 0, "window": "30s", "min_volume": 20, "slow_ratio": 0.5}}],
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"}],
        "store": {"path": ")" + dir + R"(/bb.db"}})");
    child check{{"--check-config", path}};
    EXPECT_EQ(check.wait_exit(), 1);
    EXPECT_NE(check.output().find("upstreams[0].health.slow_ratio: needs slow_call"), std::string::npos) << check.output();
    child bb{{"--config", path}};
    ASSERT_NE(started_port(bb), 0) << bb.output();
    EXPECT_NE(bb.output().find("upstreams[0].health.slow_ratio: needs slow_call"), std::string::npos) << bb.output();
    EXPECT_NE(bb.output().find("(kept: this config was written before the check"), std::string::npos) << bb.output();
}

TEST(check_config, invalid_json_and_missing_file_are_errors) {
    const auto dir = temp_dir();
    write_file(dir + "/broken.json", "{\"listeners\": [");
    child a{{"--check-config", dir + "/broken.json"}};
    EXPECT_EQ(a.wait_exit(), 1);
    EXPECT_NE(a.output().find("not valid JSON"), std::string::npos) << a.output();
    child b{{"--check-config", dir + "/absent.json"}};
    EXPECT_EQ(b.wait_exit(), 1);
    EXPECT_NE(b.output().find("cannot read"), std::string::npos) << b.output();
    child usage{{"--bogus"}};
    EXPECT_EQ(usage.wait_exit(), 2);
}

TEST(signals, sighup_with_a_bad_config_keeps_the_old_one_and_a_good_one_applies) {
    fake_upstream up{[](const request& r) { return respond(200, std::string{r.target()}); }};
    const auto dir = temp_dir();
    const auto path = dir + "/bb.json";
    write_file(path, make_config(local_url(up.port())));
    child bb{{"--config", path, "--log-level", "info"}};
    const auto port = started_port(bb);
    ASSERT_NE(port, 0);
    EXPECT_EQ(http_request(port, http::verb::get, "/before").result_int(), 200u);

    write_file(path, R"({"listeners": [{"name": "x", "address": "127.0.0.1:0"}], "routes": 7})");
    ::kill(bb.pid(), SIGHUP);
    bb.wait_output("the old one keeps serving");
    bb.wait_output("routes: must be an array");
    EXPECT_EQ(http_request(port, http::verb::get, "/still").result_int(), 200u);

    // A good config: the catch-all route now has a path prefix that /still does not match.
    std::string next = make_config(local_url(up.port()));
    next.replace(next.find("\"path_prefix\": \"/\""), 18, "\"path_prefix\": \"/v2/\"");
    write_file(path, next);
    ::kill(bb.pid(), SIGHUP);
    bb.wait_output("configuration reloaded");
    EXPECT_EQ(http_request(port, http::verb::get, "/still").result_int(), 404u);
    EXPECT_EQ(http_request(port, http::verb::get, "/v2/ok").result_int(), 200u);

    ::kill(bb.pid(), SIGTERM);
    EXPECT_EQ(bb.wait_exit(), 0);
}

// An https upstream named by a host name with its own CA bundle starts without an error:
// the failed reading of the host as an IP address once reached the trust store's check.
TEST(startup, an_upstream_named_by_host_with_a_ca_file_logs_no_error) {
    const auto dir = temp_dir();
    const std::string certs = BB_TEST_CERTS_DIR;
    const auto path = dir + "/bb.json";
    write_file(path, R"({"listeners": [{"name": "main", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "up", "url": "https://localhost:1", "ca_file": ")" + certs + R"(/ca.pem"}],
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"}],
        "store": {"path": ")" + dir + R"(/bb.db"}})");
    child bb{{"--config", path, "--log-level", "info"}};
    ASSERT_NE(started_port(bb), 0);
    EXPECT_EQ(bb.output().find("cannot load"), std::string::npos) << bb.output();
}

// A certificate renewal hook sends SIGHUP: the renewed files are served even when the config
// file has a mistake in it meanwhile (the config is refused, the running one's TLS files are
// re-read), rather than the expiring certificate going on until the file is mended.
TEST(signals, sighup_reloads_renewed_certificates_even_when_the_config_is_refused) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    const std::string certs = BB_TEST_CERTS_DIR;
    std::filesystem::copy_file(certs + "/server.pem", dir + "/tls.pem");
    std::filesystem::copy_file(certs + "/server.key", dir + "/tls.key");
    const auto path = dir + "/bb.json";
    write_file(path, R"({"listeners": [{"name": "tls", "address": "127.0.0.1:0", "tls": {"cert_file": ")" + dir +
                         R"(/tls.pem", "key_file": ")" + dir + R"(/tls.key"}}],
        "upstreams": [{"name": "up", "url": ")" + local_url(up.port()) + R"("}],
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"}],
        "store": {"path": ")" + dir + R"(/bb.db"}})");
    child bb{{"--config", path, "--log-level", "info"}};
    const auto m = bb.wait_output(R"(listener tls on https://127\.0\.0\.1:(\d+))");
    ASSERT_FALSE(m.empty());
    const std::string port = m[1].str();
    auto curl_as = [&](const std::string& name) {
        const std::string cmd = "curl -sS --max-time 10 --cacert " + certs + "/ca.pem --resolve " + name + ":" + port +
                                ":127.0.0.1 -o /dev/null -w '%{http_code}' https://" + name + ":" + port + "/x 2>&1";
        std::string out;
        if (FILE* p = ::popen(cmd.c_str(), "r")) {
            char buf[512];
            while (std::fgets(buf, sizeof buf, p) != nullptr) {
                out += buf;
            }
            ::pclose(p);
        }
        return out;
    };
    EXPECT_EQ(curl_as("localhost"), "200");
    std::filesystem::copy_file(certs + "/wrong-name.pem", dir + "/tls.pem", std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(certs + "/wrong-name.key", dir + "/tls.key", std::filesystem::copy_options::overwrite_existing);
    write_file(path, R"({"listeners": [{"name": "x", "address": "127.0.0.1:0"}], "routes": 7})");
    ::kill(bb.pid(), SIGHUP);
    bb.wait_output("the old one keeps serving");
    bb.wait_output("routes: must be an array");
    bb.wait_output("the running config's certificate files re-read");
    EXPECT_EQ(curl_as("wrong.example"), "200") << "the renewed certificate is served";
    ::kill(bb.pid(), SIGTERM);
    EXPECT_EQ(bb.wait_exit(), 0);
}

// SIGHUP and a start from a file are config changes like an API apply: written to the audit
// log first (who: the signal or the start; the file's SHA-256; the diff), numbered as config
// versions; a restart that drops a config applied through the API says so.
TEST(signals, sighup_and_a_restart_from_the_file_are_audited_and_numbered) {
    fake_upstream up{[](const request& r) { return respond(200, std::string{r.target()}); }};
    const auto dir = temp_dir();
    const auto path = dir + "/bb.json";
    auto with_admin = [&](std::string cfg) {
        cfg.insert(cfg.rfind('}'), ", \"store\": {\"path\": \"" + dir + "/bb.db\"},"
                                   "\"admin\": {\"address\": \"127.0.0.1:0\", \"tokens\": ["
                                   "{\"name\": \"ada\", \"role\": \"admin\", \"sha256\": \"" + sha256_hex_of("admin-token") + "\"},"
                                   "{\"name\": \"vera\", \"role\": \"viewer\", \"sha256\": \"" + sha256_hex_of("view-token") + "\"}]}");
        return cfg;
    };
    const std::string first = with_admin(make_config(local_url(up.port())));
    std::string second = first;
    second.replace(second.find("\"path_prefix\": \"/\""), 18, "\"path_prefix\": \"/v2/\"");
    write_file(path, first);
    auto start = [&](child& bb) {
        started_port(bb);
        auto m = bb.wait_output(R"(admin API on http://127\.0\.0\.1:(\d+))");
        return m.empty() ? std::uint16_t{0} : static_cast<std::uint16_t>(std::stoi(m[1].str()));
    };
    // The audit log as the viewer reads it, once it holds `want` (bounded: the start's entry
    // is written by the control thread as the admin API opens).
    auto audit_with = [&](std::uint16_t admin, const std::string& want) {
        std::string body;
        for (int i = 0; i < 200; ++i) {
            auto r = http_request(admin, http::verb::get, "/v1/audit?limit=1000", {},
                                  {{"authorization", "Bearer view-token"}});
            body = r.body();
            if (body.find(want) != std::string::npos) {
                break;
            }
            pollfd none{};
            ::poll(&none, 0, 10);
        }
        return body;
    };
    {
        child bb{{"--config", path, "--log-level", "info"}};
        const auto admin = start(bb);
        ASSERT_NE(admin, 0);
        auto log = audit_with(admin, "first start from this file");
        EXPECT_NE(log.find(R"("actor":"startup")"), std::string::npos) << log;
        EXPECT_NE(log.find("first start from this file (version 1)"), std::string::npos) << log;

        write_file(path, R"({"listeners": [{"name": "x", "address": "127.0.0.1:0"}], "routes": 7})");
        ::kill(bb.pid(), SIGHUP);
        bb.wait_output("the old one keeps serving");
        log = audit_with(admin, "invalid_config");
        EXPECT_NE(log.find(R"("actor":"signal:SIGHUP")"), std::string::npos) << log;
        EXPECT_NE(log.find("routes: must be an array"), std::string::npos) << log;

        write_file(path, second);
        ::kill(bb.pid(), SIGHUP);
        bb.wait_output("configuration reloaded");
        log = audit_with(admin, "applied (version 2)");
        EXPECT_NE(log.find(sha256_hex_of(second)), std::string::npos) << "the file's digest: " << log;
        EXPECT_NE(log.find(R"("result":"started")"), std::string::npos) << log;
        EXPECT_NE(log.find("loosens: changes routes"), std::string::npos) << "the diff: " << log;
        auto cfg = http_request(admin, http::verb::get, "/v1/config", {}, {{"authorization", "Bearer view-token"}});
        EXPECT_NE(std::string{cfg.body()}.find(R"({"version":2,)"), std::string::npos) << cfg.body();

        // Back to the first config through the API (version 3), which does not write the file.
        std::string apply = R"({"reason": "back to /", "base_version": 2, "config": )" + first + "}";
        auto r = http_request(admin, http::verb::post, "/v1/config", apply,
                              {{"authorization", "Bearer admin-token"}, {"content-type", "application/json"}});
        EXPECT_EQ(r.result_int(), 200u) << r.body();
        r = http_request(admin, http::verb::post, "/v1/config", apply,
                         {{"authorization", "Bearer admin-token"}, {"content-type", "application/json"}});
        EXPECT_EQ(r.result_int(), 409u) << "made from version 2, which is no longer current: " << r.body();
        EXPECT_NE(std::string{r.body()}.find("version_conflict"), std::string::npos) << r.body();
        ::kill(bb.pid(), SIGTERM);
        EXPECT_EQ(bb.wait_exit(), 0);
    }
    // Restarted from an edited file (a /v3/ config): what the API applied is gone, and said so.
    std::string third = first;
    third.replace(third.find("\"path_prefix\": \"/\""), 18, "\"path_prefix\": \"/v3/\"");
    write_file(path, third);
    child bb{{"--config", path, "--log-level", "info"}};
    const auto admin = start(bb);
    ASSERT_NE(admin, 0);
    bb.wait_output("differs from version 3");
    bb.wait_output("the file loosens a guard of version 3: changes routes");
    const auto log = audit_with(admin, "differs from the last applied version 3");
    EXPECT_NE(log.find("differs from the last applied version 3 (version 4)"), std::string::npos) << log;
    ::kill(bb.pid(), SIGTERM);
    EXPECT_EQ(bb.wait_exit(), 0);
}

// An emergency change through the API (here: only /v2/ is routed) is not undone by a SIGHUP
// from a certificate-renewal hook or by a restart while the file is unchanged since it was
// last read; an edited file applies, at a SIGHUP and at a start.
TEST(signals, a_config_applied_through_the_api_survives_sighup_and_restart_while_the_file_is_unchanged) {
    fake_upstream up{[](const request& r) { return respond(200, std::string{r.target()}); }};
    const auto dir = temp_dir();
    const auto path = dir + "/bb.json";
    const std::string file = with_admin_api(make_config(local_url(up.port())), dir);
    auto with_prefix = [&](const std::string& prefix) {
        std::string c = file;
        c.replace(c.find("\"path_prefix\": \"/\""), 18, "\"path_prefix\": \"" + prefix + "\"");
        return c;
    };
    write_file(path, file);
    const std::vector<std::pair<std::string, std::string>> admin_auth{{"authorization", "Bearer admin-token"},
                                                                      {"content-type", "application/json"}};
    auto start = [&](child& bb) {
        const auto port = started_port(bb);
        auto m = bb.wait_output(R"(admin API on http://127\.0\.0\.1:(\d+))");
        return std::pair{port, m.empty() ? std::uint16_t{0} : static_cast<std::uint16_t>(std::stoi(m[1].str()))};
    };
    auto status = [](std::uint16_t port, const std::string& target) {
        return http_request(port, http::verb::get, target).result_int();
    };
    {
        child bb{{"--config", path, "--log-level", "info"}};
        const auto [port, admin] = start(bb);
        ASSERT_NE(admin, 0);
        bb.wait_output("audit: entry 1 appended");  // the start recorded the file as version 1
        const std::string apply = R"({"reason": "incident 7: only v2", "config": )" + with_prefix("/v2/") + "}";
        auto r = http_request(admin, http::verb::post, "/v1/config", apply, admin_auth);
        ASSERT_EQ(r.result_int(), 200u) << r.body();
        EXPECT_EQ(status(port, "/v1/x"), 404u);

        ::kill(bb.pid(), SIGHUP);  // the file is as it was read at the start
        bb.wait_output("keeps running");
        EXPECT_EQ(status(port, "/v1/x"), 404u) << "the SIGHUP undid the change made through the API";
        EXPECT_EQ(status(port, "/v2/x"), 200u);

        // The store cannot say what the file was (its mark unreadable): whether the file
        // would undo the API's change is unknown, so nothing changes.
        auto exec = [&](const char* sql) { sqlite_exec(dir + "/bb.db", sql); };
        exec("ALTER TABLE config_file RENAME TO config_file_away");
        ::kill(bb.pid(), SIGHUP);
        bb.wait_output("SIGHUP: not reloaded: cannot read the config file's mark");
        EXPECT_EQ(status(port, "/v1/x"), 404u) << "a SIGHUP the store could not judge applied the file";
        EXPECT_EQ(status(port, "/v2/x"), 200u);
        exec("ALTER TABLE config_file_away RENAME TO config_file");
        ::kill(bb.pid(), SIGTERM);
        EXPECT_EQ(bb.wait_exit(), 0);
    }
    {
        child bb{{"--config", path, "--log-level", "info"}};
        const auto [port, admin] = start(bb);
        ASSERT_NE(port, 0);
        // Logged before the listeners start, by the asynchronous logger: before or after them.
        const std::string runs = "version 2, applied after it through the admin API, runs";
        if (bb.output().find(runs) == std::string::npos) {
            bb.wait_output(runs);
        }
        EXPECT_EQ(status(port, "/v1/x"), 404u) << "the restart undid the change made through the API";
        EXPECT_EQ(status(port, "/v2/x"), 200u);

        write_file(path, with_prefix("/v3/"));  // edited: the file applies
        ::kill(bb.pid(), SIGHUP);
        bb.wait_output("configuration reloaded");
        EXPECT_EQ(status(port, "/v2/x"), 404u);
        EXPECT_EQ(status(port, "/v3/x"), 200u);
        const std::string apply = R"({"reason": "back to v2", "config": )" + with_prefix("/v2/") + "}";
        auto r = http_request(admin, http::verb::post, "/v1/config", apply, admin_auth);
        ASSERT_EQ(r.result_int(), 200u) << r.body();
        ::kill(bb.pid(), SIGTERM);
        EXPECT_EQ(bb.wait_exit(), 0);
    }
    {
        // The SIGHUP above recorded the /v3/ file as read: it is unchanged, so /v2/ runs.
        child bb{{"--config", path, "--log-level", "info"}};
        const auto [port, admin] = start(bb);
        ASSERT_NE(port, 0);
        EXPECT_EQ(status(port, "/v3/x"), 404u) << "the restart undid the change made through the API";
        EXPECT_EQ(status(port, "/v2/x"), 200u);
        // POST /v1/config/reload applies the file, whatever it is, and records it as read.
        auto r = http_request(admin, http::verb::post, "/v1/config/reload", R"({"reason": "to the file"})", admin_auth);
        ASSERT_EQ(r.result_int(), 200u) << r.body();
        EXPECT_EQ(status(port, "/v3/x"), 200u);
        const std::string apply = R"({"reason": "v2 again", "config": )" + with_prefix("/v2/") + "}";
        r = http_request(admin, http::verb::post, "/v1/config", apply, admin_auth);
        ASSERT_EQ(r.result_int(), 200u) << r.body();
        ::kill(bb.pid(), SIGHUP);
        bb.wait_output("keeps running");
        EXPECT_EQ(status(port, "/v3/x"), 404u) << "the SIGHUP undid the change made through the API";
        ::kill(bb.pid(), SIGTERM);
        EXPECT_EQ(bb.wait_exit(), 0);
    }
    write_file(path, with_prefix("/v4/"));  // edited while stopped: the file runs
    child bb{{"--config", path, "--log-level", "info"}};
    const auto [port, admin] = start(bb);
    ASSERT_NE(port, 0);
    bb.wait_output("differs from version");
    EXPECT_EQ(status(port, "/v2/x"), 404u);
    EXPECT_EQ(status(port, "/v4/x"), 200u);
    ::kill(bb.pid(), SIGTERM);
    EXPECT_EQ(bb.wait_exit(), 0);
}

// A setting fixed until a restart that an API apply changed (here: the listener, onto a
// port already taken) is tried for the first time at the next start; a version that cannot
// start falls back to the file rather than keeping every restart down.
TEST(signals, a_stored_version_that_cannot_start_falls_back_to_the_file) {
    fake_upstream up{[](const request& r) { return respond(200, std::string{r.target()}); }};
    const auto dir = temp_dir();
    const auto path = dir + "/bb.json";
    const std::string file = with_admin_api(make_config(local_url(up.port())), dir);
    write_file(path, file);
    std::string taken = file;  // the listener on the fake upstream's port
    taken.replace(taken.find("127.0.0.1:0"), 11, "127.0.0.1:" + std::to_string(up.port()));
    {
        child bb{{"--config", path, "--log-level", "info"}};
        started_port(bb);
        auto m = bb.wait_output(R"(admin API on http://127\.0\.0\.1:(\d+))");
        ASSERT_FALSE(m.empty());
        const auto admin = static_cast<std::uint16_t>(std::stoi(m[1].str()));
        bb.wait_output("audit: entry 1 appended");
        auto r = http_request(admin, http::verb::post, "/v1/config", R"({"reason": "move", "config": )" + taken + "}",
                              {{"authorization", "Bearer admin-token"}, {"content-type", "application/json"}});
        ASSERT_EQ(r.result_int(), 200u) << r.body();
        ::kill(bb.pid(), SIGTERM);
        EXPECT_EQ(bb.wait_exit(), 0);
    }
    child bb{{"--config", path, "--log-level", "info"}};
    bb.wait_output("version 2 cannot start");
    const auto port = started_port(bb);
    ASSERT_NE(port, 0);
    EXPECT_NE(port, up.port());
    EXPECT_EQ(http_request(port, http::verb::get, "/x").result_int(), 200u);
    ::kill(bb.pid(), SIGTERM);
    EXPECT_EQ(bb.wait_exit(), 0);
}

TEST(signals, sigterm_drains_in_flight_requests_and_exits_0) {
    fake_upstream up{[](const request&) {
        auto b = respond(200, "finished");
        b.delay = 400ms;
        return b;
    }};
    const auto dir = temp_dir();
    // With an access log file: its lines are written out before exit, and the exit is clean
    // (the server used to outlive spdlog's log thread and abort in its destructor).
    std::string cfg = make_config(local_url(up.port()));
    const std::string off = "\"access_log\": \"off\"";
    ASSERT_NE(cfg.find(off), std::string::npos);
    cfg.replace(cfg.find(off), off.size(), "\"access_log\": \"" + dir + "/access.log\"");
    write_file(dir + "/bb.json", cfg);
    child bb{{"--config", dir + "/bb.json", "--log-level", "info"}};
    const auto port = started_port(bb);
    ASSERT_NE(port, 0);
    raw_client busy{port};
    busy.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}");
    ASSERT_TRUE(up.wait_for([&] { return up.request_count() == 1; }));
    ::kill(bb.pid(), SIGTERM);
    auto res = busy.read_response();
    EXPECT_EQ(res.result_int(), 200u);
    EXPECT_EQ(res.body(), "finished");
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(bb.wait_exit(), 0) << bb.output();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms) << "exit must not wait for the 2s grace period once drained";
    EXPECT_NE(bb.output().find("draining"), std::string::npos);
    std::ifstream in{dir + "/access.log"};
    const std::string log{std::istreambuf_iterator<char>{in}, {}};
    EXPECT_NE(log.find("\"status\":200"), std::string::npos) << log;
    EXPECT_EQ(log.find("drain marker"), std::string::npos) << log;
    // After exit nothing listens any more.
    EXPECT_THROW(raw_client{port}, std::runtime_error);
}

TEST(resources, fd_count_returns_to_baseline_after_10000_mixed_requests) {
    fake_upstream up{[](const request& r) {
        if (r.target() == "/reset") {
            behaviour b;
            b.what = behaviour::kind::reset_before_headers;
            return b;
        }
        if (r.target() == "/bad-framing") {
            return respond_raw("HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx", true);
        }
        return respond(200, "{\"ok\":true}");
    }};
    const auto dir = temp_dir();
    write_file(dir + "/bb.json", make_config(local_url(up.port()), "", "", "", 1));
    child bb{{"--config", dir + "/bb.json", "--log-level", "error"}};
    const auto port = started_port(bb);
    ASSERT_NE(port, 0);
    // Warm up so the upstream pool holds its steady-state connection.
    EXPECT_EQ(http_request(port, http::verb::get, "/warm").result_int(), 200u);
    const auto baseline = open_fds(bb.pid());
    ASSERT_GT(baseline, 0u);

    std::size_t sent = 0;
    std::size_t by_kind[6] = {};
    auto keepalive = std::make_unique<raw_client>(port);
    while (sent < 10'000) {
        const int kind = static_cast<int>(sent % 6);
        ++by_kind[kind];
        switch (kind) {
            case 0:  // good, on a keep-alive connection
            case 1: {
                keepalive->send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}");
                auto res = keepalive->read_response();
                ASSERT_EQ(res.result_int(), 200u) << "request " << sent;
                break;
            }
            case 2: {  // bad framing from the client: 400 and close
                raw_client c{port};
                c.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx");
                ASSERT_EQ(c.read_response().result_int(), 400u);
                break;
            }
            case 3: {  // upstream resets: 502
                keepalive->send("GET /reset HTTP/1.1\r\nHost: a\r\n\r\n");
                ASSERT_EQ(keepalive->read_response().result_int(), 502u);
                break;
            }
            case 4: {  // upstream sends bad framing: 502, upstream connection dropped
                keepalive->send("GET /bad-framing HTTP/1.1\r\nHost: a\r\n\r\n");
                ASSERT_EQ(keepalive->read_response().result_int(), 502u);
                break;
            }
            case 5: {  // the client gives up mid-request
                raw_client c{port};
                c.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhalf");
                c.close();
                break;
            }
        }
        ++sent;
        if (sent % 1000 == 0) {
            keepalive = std::make_unique<raw_client>(port);  // also churn the keep-alive connection
        }
    }
    keepalive.reset();
    // Connections close asynchronously; wait (with a deadline) for the count to settle.
    const auto until = std::chrono::steady_clock::now() + 10s;
    std::size_t now = open_fds(bb.pid());
    while (now > baseline + 2 && std::chrono::steady_clock::now() < until) {
        // One request round trip is a natural "tick" that lets pending closes complete.
        http_request(port, http::verb::get, "/tick");
        now = open_fds(bb.pid());
    }
    EXPECT_LE(now, baseline + 2) << "baseline " << baseline << ", after 10000 requests " << now;
    EXPECT_GE(now + 2, baseline);
    ::kill(bb.pid(), SIGTERM);
    EXPECT_EQ(bb.wait_exit(), 0);
}

// dir/bb.json: two workers, a store in dir, and a cap of 15 recipients per campaign an hour
// (rule "cap") that pauses the campaign (breaker campaign-volume, manual reset).
static void write_capped_config(const std::string& dir, std::uint16_t upstream_port) {
    std::string cfg = make_config(local_url(upstream_port), "", "", "", 2);
    cfg.insert(cfg.rfind('}'),
               ", \"store\": {\"path\": \"" + dir +
                   "/bb.db\"}, \"failure_modes\": [{\"id\": \"fm\", \"title\": \"Volume\", \"severity\": \"sev2\"}],"
                   "\"breakers\": [{\"id\": \"campaign-volume\", \"action\": \"pause\", \"reset\": \"manual\"}],"
                   "\"rules\": [{\"id\": \"cap\", \"route\": \"mail-send\", \"key\": [\"header:x-campaign-id\"],"
                   "\"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\", \"limit\": 15,"
                   "\"failure_mode\": \"fm\", \"trips\": \"campaign-volume\"}]");
    write_file(dir + "/bb.json", cfg);
}

// dir/bb.json: two workers, a store in dir, and a quarantine breaker `breaker` (manual reset)
// that rule "cap" trips past `limit` recipients an hour (`key`: the rule's key member and a
// comma, or empty for one count).
static void write_quarantine_config(const std::string& dir, std::uint16_t upstream_port, const std::string& breaker,
                                    int limit, const std::string& key = "") {
    std::string cfg = make_config(local_url(upstream_port), "", "", "", 2);
    cfg.insert(cfg.rfind('}'),
               ", \"store\": {\"path\": \"" + dir +
                   "/bb.db\"}, \"failure_modes\": [{\"id\": \"fm\", \"title\": \"Volume\", \"severity\": \"sev2\"}],"
                   "\"breakers\": [{\"id\": \"" + breaker + "\", \"action\": \"quarantine\", \"reset\": \"manual\"}],"
                   "\"rules\": [{\"id\": \"cap\", \"route\": \"mail-send\", " + key +
                   "\"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\", \"limit\": " +
                   std::to_string(limit) + ", \"failure_mode\": \"fm\", \"trips\": \"" + breaker + "\"}]");
    write_file(dir + "/bb.json", cfg);
}

TEST(durability, a_breaker_tripped_before_kill_9_is_still_tripped_after_restart) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    write_capped_config(dir, up.port());
    const std::string ten = "{\"to\":[1,2,3,4,5,6,7,8,9,10]}";
    auto send = [&](std::uint16_t port) {
        return http_request(port, http::verb::post, "/v3/mail/send", ten,
                            {{"content-type", "application/json"}, {"x-campaign-id", "spring"}});
    };
    {
        child bb{{"--config", dir + "/bb.json"}};
        const auto port = started_port(bb);
        ASSERT_NE(port, 0);
        EXPECT_EQ(send(port).result_int(), 202u);
        EXPECT_EQ(send(port).result_int(), 503u);  // 20 > 15: tripped, and durable before this answer
        ::kill(bb.pid(), SIGKILL);
        EXPECT_EQ(bb.wait_exit(), 128 + SIGKILL);
        // A new store is said (a changed store.path would otherwise start every breaker closed
        // in silence); the restart below opens this one and says nothing of the kind.
        EXPECT_NE(bb.output().find("did not exist and was created"), std::string::npos) << bb.output();
    }
    child again{{"--config", dir + "/bb.json"}};
    const auto port = started_port(again);
    ASSERT_NE(port, 0);
    auto res = send(port);  // the very first request after the restart
    EXPECT_EQ(res.result_int(), 503u) << res;
    EXPECT_EQ(res["x-breakerbox-decision"], "paused");
    EXPECT_EQ(up.request_count(), 1u);
    // Another campaign is unaffected.
    EXPECT_EQ(http_request(port, http::verb::post, "/v3/mail/send", ten,
                           {{"content-type", "application/json"}, {"x-campaign-id", "autumn"}})
                  .result_int(),
              202u);
    ::kill(again.pid(), SIGTERM);
    EXPECT_EQ(again.wait_exit(), 0);
    EXPECT_EQ(again.output().find("did not exist and was created"), std::string::npos) << again.output();
}

// A store file of zero bytes (truncated, made by `touch`, a copy restored without its -wal)
// opens as an empty database: every breaker closed, nothing held. Said at the start.
TEST(durability, an_empty_store_file_is_said_at_the_start) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    write_capped_config(dir, up.port());
    write_file(dir + "/bb.db", "");
    child bb{{"--config", dir + "/bb.json"}};
    ASSERT_NE(started_port(bb), 0);
    ::kill(bb.pid(), SIGTERM);
    EXPECT_EQ(bb.wait_exit(), 0);
    EXPECT_NE(bb.output().find("existed but was empty (zero bytes)"), std::string::npos) << bb.output();
    EXPECT_EQ(bb.output().find("did not exist and was created"), std::string::npos) << bb.output();
}

// A cap is no fresh cap after a restart (PRODUCT.md principle 4): the counts are saved every
// second and at shutdown, and read back before the first request. 10 of 15 recipients sent,
// then a kill -9 after a periodic save (seen in the store), or a SIGTERM at once: the next 10
// cross the cap.
TEST(durability, a_cap_keeps_its_counts_across_kill_9_and_sigterm_restarts) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    write_capped_config(dir, up.port());
    const std::string ten = "{\"to\":[1,2,3,4,5,6,7,8,9,10]}";
    auto send = [&](std::uint16_t port, const std::string& campaign) {
        return http_request(port, http::verb::post, "/v3/mail/send", ten,
                            {{"content-type", "application/json"}, {"x-campaign-id", campaign}});
    };
    // Whether the store holds saved counts (read beside the running process, as SQLite lets).
    auto saved_rows = [&] { return sqlite_count(dir + "/bb.db", "rule_meters"); };
    {
        child bb{{"--config", dir + "/bb.json"}};
        const auto port = started_port(bb);
        ASSERT_NE(port, 0);
        EXPECT_EQ(send(port, "spring").result_int(), 202u);
        // The control thread saves once a second: wait (bounded) for it to be in the store.
        const auto until = std::chrono::steady_clock::now() + 20s;
        while (saved_rows() < 1 && std::chrono::steady_clock::now() < until) {
            ::poll(nullptr, 0, 20);
        }
        ASSERT_EQ(saved_rows(), 1);
        ::kill(bb.pid(), SIGKILL);
        EXPECT_EQ(bb.wait_exit(), 128 + SIGKILL);
    }
    {
        child bb{{"--config", dir + "/bb.json"}};
        const auto port = started_port(bb);
        ASSERT_NE(port, 0);
        auto res = send(port, "spring");  // 10 + 10 > 15
        EXPECT_EQ(res.result_int(), 503u) << res;
        EXPECT_EQ(res["x-breakerbox-decision"], "paused");
        // Another campaign: 10 sent, then a SIGTERM at once (no periodic save yet needed).
        EXPECT_EQ(send(port, "autumn").result_int(), 202u);
        ::kill(bb.pid(), SIGTERM);
        EXPECT_EQ(bb.wait_exit(), 0);
    }
    child again{{"--config", dir + "/bb.json"}};
    const auto port = started_port(again);
    ASSERT_NE(port, 0);
    auto res = send(port, "autumn");
    EXPECT_EQ(res.result_int(), 503u) << res;
    EXPECT_EQ(up.request_count(), 2u) << "one send of each campaign reached the upstream, none after a restart";
    ::kill(again.pid(), SIGTERM);
    EXPECT_EQ(again.wait_exit(), 0);
}

// The key of a request sent live is remembered across a kill -9 that comes before the store's
// next save of it (every 50 ms): the journal beside the store holds it from before the request
// went out. A retry of it once a breaker quarantines is refused, never held to be released into
// a second send. (Before the journal, a crash forgot the keys of its last 50 ms: the requests
// it cut off, the very ones clients retry.)
TEST(durability, a_key_sent_live_just_before_kill_9_is_remembered_after_restart) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    write_quarantine_config(dir, up.port(), "campaign-volume", 2, "\"key\": [\"header:x-campaign-id\"], ");
    auto send = [&](std::uint16_t port, const std::string& body, const std::string& key) {
        std::vector<std::pair<std::string, std::string>> headers{{"content-type", "application/json"},
                                                                 {"x-campaign-id", "spring"}};
        if (!key.empty()) {
            headers.emplace_back("idempotency-key", key);
        }
        return http_request(port, http::verb::post, "/v3/mail/send", body, headers);
    };
    {
        child bb{{"--config", dir + "/bb.json"}};
        const auto port = started_port(bb);
        ASSERT_NE(port, 0);
        ASSERT_EQ(send(port, R"({"to":[1]})", "k-1").result_int(), 202u);
        ::kill(bb.pid(), SIGKILL);  // at once: the 50 ms save has most likely not run
        EXPECT_EQ(bb.wait_exit(), 128 + SIGKILL);
    }
    ASSERT_EQ(up.request_count(), 1u);
    child again{{"--config", dir + "/bb.json"}};
    const auto port = started_port(again);
    ASSERT_NE(port, 0);
    const auto trip = send(port, R"({"to":[1,2,3]})", "");  // over the cap: trips, and is held
    ASSERT_EQ(trip.result_int(), 202u) << trip;
    ASSERT_FALSE(trip["x-breakerbox-ticket"].empty()) << trip;
    const auto retry = send(port, R"({"to":[1]})", "k-1");
    EXPECT_EQ(retry.result_int(), 409u) << retry;
    EXPECT_NE(retry.body().find("already_forwarded"), std::string::npos) << retry.body();
    EXPECT_EQ(up.request_count(), 1u);
    ::kill(again.pid(), SIGTERM);
    EXPECT_EQ(again.wait_exit(), 0);
}

TEST(durability, a_corrupt_state_file_refuses_to_start) {
    const auto dir = temp_dir();
    std::string cfg = make_config("http://127.0.0.1:9");
    cfg.insert(cfg.rfind('}'), ", \"store\": {\"path\": \"" + dir +
                                   "/bb.db\"}, \"breakers\": [{\"id\": \"b\", \"action\": \"pause\"}]");
    write_file(dir + "/bb.json", cfg);
    write_file(dir + "/bb.breakers.json", "{\"instances\": [{\"instance\": ");
    child bb{{"--config", dir + "/bb.json"}};
    EXPECT_EQ(bb.wait_exit(), 1);
    EXPECT_NE(bb.output().find("cannot restore breaker state"), std::string::npos) << bb.output();
}

TEST(durability, quarantine_survives_50_kill_9_restarts_with_every_acknowledged_ticket_intact) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    write_quarantine_config(dir, up.port(), "hold-all", 0);

    struct sent {
        std::string body;
        std::string marker;
        std::string target;
    };
    std::mutex mu;
    std::condition_variable cv;
    std::map<std::string, sent> acknowledged;  // ticket -> what the client sent
    std::atomic<std::uint16_t> port{0};
    std::atomic<bool> done{false};
    std::atomic<std::uint64_t> acks{0};
    std::atomic<std::uint64_t> next_id{0};

    auto client = [&] {
        while (!done) {
            const auto p = port.load();
            if (p == 0) {
                std::unique_lock lock{mu};
                cv.wait_for(lock, 50ms, [&] { return port.load() != 0 || done.load(); });
                continue;
            }
            try {
                raw_client c{p, 2s};
                for (int i = 0; i < 50 && !done; ++i) {
                    const auto id = next_id++;
                    const std::string marker = "m" + std::to_string(id);
                    const std::string body = "{\"to\":[1],\"id\":\"" + marker + "\",\"bin\":\"\\u0000\\u00ff\"}";
                    std::ostringstream ss;
                    const std::string target = "/v3/mail/send?c=" + std::to_string(id);
                    ss << "POST " << target << " HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                       << "X-Marker: " << marker << "\r\nContent-Length: " << body.size() << "\r\n\r\n" << body;
                    c.send(ss.str());
                    auto res = c.read_response();
                    if (res.result_int() == 0) {
                        break;  // killed mid-request: the outcome is unknown to this client
                    }
                    ASSERT_EQ(res.result_int(), 202u) << res;
                    const std::string ticket{res["x-breakerbox-ticket"]};
                    {
                        std::lock_guard lock{mu};
                        ASSERT_TRUE(acknowledged.emplace(ticket, sent{body, marker, target}).second) << "ticket reused: " << ticket;
                    }
                    ++acks;
                    cv.notify_all();
                }
            } catch (const std::runtime_error&) {
                // connection refused: the server is restarting
            }
        }
    };
    std::vector<std::thread> clients;
    for (int i = 0; i < 4; ++i) {
        clients.emplace_back(client);
    }
    std::mt19937 rng{12345};
    for (int iteration = 0; iteration < 50; ++iteration) {
        child bb{{"--config", dir + "/bb.json", "--log-level", "error"}};
        const auto p = started_port(bb);
        ASSERT_NE(p, 0) << bb.output();
        const auto target = acks.load() + std::uniform_int_distribution<int>{1, 25}(rng);
        port = p;
        cv.notify_all();
        {
            std::unique_lock lock{mu};
            ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return acks.load() >= target; })) << "no progress";
        }
        ::kill(bb.pid(), SIGKILL);  // at a moment chosen by the traffic, not by a timer
        port = 0;
        EXPECT_EQ(bb.wait_exit(), 128 + SIGKILL);
    }
    done = true;
    cv.notify_all();
    for (auto& t : clients) {
        t.join();
    }
    ASSERT_GT(acknowledged.size(), 50u);

    bb::real_clock clock;
    std::string error;
    bb::store::store_options so;
    so.path = dir + "/bb.db";
    auto db = bb::store::database::open(so, clock, &error);
    ASSERT_TRUE(db) << error;
    for (const auto& [ticket, s] : acknowledged) {
        auto rec = db->get(ticket);
        ASSERT_TRUE(rec) << "acknowledged ticket " << ticket << " is missing";
        EXPECT_EQ(rec->body, s.body) << ticket;
        EXPECT_EQ(rec->method, "POST");
        EXPECT_EQ(rec->target, s.target);
        std::string marker;
        for (const auto& [n, v] : rec->headers) {
            if (n == "X-Marker") {
                marker = v;
            }
        }
        EXPECT_EQ(marker, s.marker) << ticket;
    }
    // No request is held twice.
    bb::store::list_filter all;
    all.limit = 1000;
    std::set<std::string> markers;
    std::size_t records = 0;
    for (;;) {
        const auto page = db->list(all);
        if (page.empty()) {
            break;
        }
        for (const auto& r : page) {
            auto full = db->get(r.ticket);
            ASSERT_TRUE(full);
            const auto at = full->body.find("\"id\":\"");
            ASSERT_NE(at, std::string::npos);
            EXPECT_TRUE(markers.insert(full->body.substr(at, 20)).second) << "held twice: " << full->body;
            ++records;
            all.after_ticket = r.ticket;
        }
    }
    EXPECT_GE(records, acknowledged.size());
    EXPECT_EQ(up.request_count(), 0u);
    std::cout << "[ figures  ] 50 kill -9 restarts, " << acknowledged.size() << " acknowledged holds, " << records
              << " records, 0 lost, 0 duplicated\n";
}

#ifdef BB_BREAKERCTL_BIN
namespace {

// Runs breakerctl with `args`; returns its exit code and fills `out` with stdout+stderr.
int breakerctl(const std::string& args, std::string& out) {
    FILE* pipe = ::popen((std::string{BB_BREAKERCTL_BIN} + " " + args + " 2>&1").c_str(), "r");
    out.clear();
    char buf[512];
    while (pipe && std::fgets(buf, sizeof buf, pipe)) {
        out += buf;
    }
    const int status = pipe ? ::pclose(pipe) : -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST(breakerctl, end_to_end_against_a_running_breakerbox) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = make_config(local_url(up.port()));
    cfg.insert(cfg.rfind('}'),
               ", \"store\": {\"path\": \"" + dir + "/bb.db\"},"
               "\"admin\": {\"address\": \"127.0.0.1:0\", \"tokens\": ["
               "{\"name\": \"ollie\", \"role\": \"operator\", \"sha256\": \"" + sha256_hex_of("op-token") + "\"},"
               "{\"name\": \"vera\", \"role\": \"viewer\", \"sha256\": \"" + sha256_hex_of("view-token") + "\"}]},"
               "\"failure_modes\": [{\"id\": \"fm\", \"title\": \"Volume\", \"severity\": \"sev2\"}],"
               "\"breakers\": [{\"id\": \"campaign-volume\", \"action\": \"pause\", \"reset\": \"manual\"}],"
               "\"rules\": [{\"id\": \"cap\", \"route\": \"mail-send\", \"key\": [\"header:x-campaign-id\"],"
               "\"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\", \"limit\": 100,"
               "\"failure_mode\": \"fm\", \"trips\": \"campaign-volume\"}]");
    write_file(dir + "/bb.json", cfg);
    child bb{{"--config", dir + "/bb.json"}};
    const auto port = started_port(bb);
    ASSERT_NE(port, 0);
    auto m = bb.wait_output(R"(admin API on http://127\.0\.0\.1:(\d+))");
    ASSERT_FALSE(m.empty());
    const std::string admin = "--admin http://127.0.0.1:" + m[1].str() + " ";
    std::string out;
    EXPECT_EQ(breakerctl(admin + "health", out), 0) << out;
    EXPECT_EQ(breakerctl(admin + "--token op-token trip campaign-volume/spring --reason 'loop suspected'", out), 0) << out;
    auto mail = http_request(port, http::verb::post, "/v3/mail/send", "{\"to\":[1]}",
                             {{"content-type", "application/json"}, {"x-campaign-id", "spring"}});
    EXPECT_EQ(mail.result_int(), 503u);
    EXPECT_EQ(breakerctl(admin + "--token view-token breakers", out), 0) << out;
    EXPECT_NE(out.find("campaign-volume/spring"), std::string::npos) << out;
    EXPECT_EQ(breakerctl(admin + "--token view-token --json breaker campaign-volume/spring", out), 0) << out;
    EXPECT_NE(out.find("\"state\":\"open\""), std::string::npos) << out;
    EXPECT_EQ(breakerctl(admin + "--token view-token reset campaign-volume/spring --reason nope", out), 1) << out;
    EXPECT_NE(out.find("forbidden"), std::string::npos) << out;
    EXPECT_EQ(breakerctl(admin + "breakers", out), 1) << out;
    EXPECT_NE(out.find("unauthorized"), std::string::npos) << out;
    EXPECT_EQ(breakerctl(admin + "--token op-token trip campaign-volume/x", out), 2) << "a mutation without --reason";
    EXPECT_EQ(breakerctl(admin + "--token op-token frobnicate", out), 2) << out;
    EXPECT_EQ(breakerctl(admin + "--token op-token reset campaign-volume/spring --reason checked", out), 0) << out;
    EXPECT_EQ(breakerctl(admin + "--token view-token audit verify", out), 0) << out;
    EXPECT_EQ(breakerctl(admin + "--token view-token audit", out), 0) << out;
    EXPECT_NE(out.find("loop suspected"), std::string::npos) << out;
    write_file(dir + "/bad.json", "{\"listeners\": []}");
    EXPECT_EQ(breakerctl(admin + "--token op-token config apply " + dir + "/bad.json --reason try", out), 1) << out;
    EXPECT_NE(out.find("upstreams: is required"), std::string::npos) << out;
    ::kill(bb.pid(), SIGTERM);
    EXPECT_EQ(bb.wait_exit(), 0);
    EXPECT_EQ(breakerctl(admin + "--token op-token breakers", out), 1);
    EXPECT_NE(out.find("cannot reach the admin API"), std::string::npos) << out;
}
#endif
