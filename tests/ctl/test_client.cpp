// breakerctl end to end against an in-process fake admin API (a tiny Beast server on
// 127.0.0.1:0, run on its own thread): bearer token, JSON parsed, exit codes, deadlines, TLS.
#include "ctl/commands.hpp"
#include "ctl/http_client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <gtest/gtest.h>

#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

namespace bb::ctl {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using request = http::request<http::string_body>;
using response = http::response<http::string_body>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

response json(http::status st, std::string body) {
    response res{st, 11};
    res.set(http::field::content_type, "application/json");
    res.body() = std::move(body) + "\n";
    return res;
}

// Answers each request with handler(request); in `hang` mode it reads the request and
// never answers. Thread-safe: requests() locks; the server runs on its own thread.
class fake_admin {
public:
    using handler = std::function<response(const request&)>;

    explicit fake_admin(handler h, std::string cert = {}, std::string key = {}, bool hang = false)
        : handler_(std::move(h)), hang_(hang), acceptor_(ioc_, tcp::endpoint{asio::ip::make_address("127.0.0.1"), 0}) {
        if (!cert.empty()) {
            tls_.emplace(asio::ssl::context::tls_server);
            tls_->use_certificate_chain_file(cert);
            tls_->use_private_key_file(key, asio::ssl::context::pem);
        }
        port_ = acceptor_.local_endpoint().port();
        asio::co_spawn(ioc_, accept_loop(), [](std::exception_ptr e) {
            if (e) {
                std::rethrow_exception(e);
            }
        });
        thread_ = std::thread([this] { ioc_.run(); });
    }
    ~fake_admin() {
        asio::post(ioc_, [this] {
            boost::system::error_code ignored;
            acceptor_.close(ignored);
            ioc_.stop();
        });
        thread_.join();
    }

    std::uint16_t port() const { return port_; }
    std::string url(std::string_view scheme = "http", std::string_view host = "127.0.0.1") const {
        return std::string{scheme} + "://" + std::string{host} + ":" + std::to_string(port_);
    }
    std::vector<request> requests() const {
        std::lock_guard lock{mutex_};
        return received_;
    }

private:
    asio::awaitable<void> accept_loop() {
        for (;;) {
            auto [ec, socket] = co_await acceptor_.async_accept(use_tuple);
            if (ec) {
                co_return;
            }
            asio::co_spawn(ioc_, session(std::move(socket)), [](std::exception_ptr) {});
        }
    }

    asio::awaitable<void> session(tcp::socket socket) {
        if (tls_) {
            beast::ssl_stream<beast::tcp_stream> stream{std::move(socket), *tls_};
            auto [ec] = co_await stream.async_handshake(asio::ssl::stream_base::server, use_tuple);
            if (!ec) {
                co_await serve(stream);
            }
        } else {
            beast::tcp_stream stream{std::move(socket)};
            co_await serve(stream);
        }
    }

    template <class Stream>
    asio::awaitable<void> serve(Stream& stream) {
        beast::flat_buffer buf;
        request req;
        auto [ec, n] = co_await http::async_read(stream, buf, req, use_tuple);
        if (ec) {
            co_return;
        }
        {
            std::lock_guard lock{mutex_};
            received_.push_back(req);
        }
        if (hang_) {
            // Hold the connection without answering until the client gives up and closes.
            request next;
            co_await http::async_read(stream, buf, next, use_tuple);
            co_return;
        }
        response res = handler_(req);
        res.version(11);
        res.keep_alive(false);
        res.prepare_payload();
        co_await http::async_write(stream, res, use_tuple);
    }

    handler handler_;
    bool hang_;
    asio::io_context ioc_;
    tcp::acceptor acceptor_;
    std::optional<asio::ssl::context> tls_;
    std::uint16_t port_ = 0;
    std::thread thread_;
    mutable std::mutex mutex_;
    std::vector<request> received_;
};

struct outcome {
    int code = -1;
    std::string out;
    std::string err;
};

outcome run_ctl(std::vector<std::string> args, environment env = {}) {
    std::ostringstream out;
    std::ostringstream err;
    outcome o;
    o.code = run(args, env, out, err);
    o.out = out.str();
    o.err = err.str();
    return o;
}

const std::string breakers_body =
    R"({"breakers":[{"instance":"campaign-volume","breaker":"campaign-volume","key":"","action":"quarantine",)"
    R"("state":"open","mode":"auto","mode_expires_at":null,"opened_at":1772366400000,"cooldown_ms":30000,"trips":2,)"
    R"("last_trip":{"kind":"manual","actor":"ops","reason":"drill","rule":"","key":"","value":0,"limit":0,)"
    R"("window_ms":0,"request_id":"","at":1772366400000}}],"total":1})";

// Requires "Bearer s3cret" like the real admin API, then answers by path.
response admin_like(const request& req) {
    if (req[http::field::authorization] != "Bearer s3cret") {
        return json(http::status::unauthorized,
                    R"({"error":{"code":"unauthorized","message":"an Authorization: Bearer token is required"}})");
    }
    if (req.target() == "/v1/breakers") {
        return json(http::status::ok, breakers_body);
    }
    if (req.target() == "/v1/breakers/campaign-volume%2Fspring/trip" && req.method() == http::verb::post) {
        return json(http::status::forbidden,
                    R"j({"error":{"code":"forbidden","message":"role viewer cannot trip a breaker (needs operator)"}})j");
    }
    return json(http::status::not_found, R"({"error":{"code":"not_found","message":"no admin endpoint"}})");
}

TEST(CtlClient, SendsTheBearerTokenAndRendersTheTable) {
    fake_admin admin{admin_like};
    auto o = run_ctl({"--admin", admin.url(), "breakers"}, environment{std::nullopt, "s3cret"});
    EXPECT_EQ(o.code, exit_ok) << o.err;
    EXPECT_EQ(o.out,
              "INSTANCE         STATE  MODE  TRIPS  LAST-TRIP\n"
              "campaign-volume  open   auto  2      2026-03-01T12:00:00Z manual by ops\n");
    EXPECT_TRUE(o.err.empty());
    const auto reqs = admin.requests();
    ASSERT_EQ(reqs.size(), 1u);
    EXPECT_EQ(reqs[0].method(), http::verb::get);
    EXPECT_EQ(reqs[0].target(), "/v1/breakers");
    EXPECT_EQ(reqs[0][http::field::authorization], "Bearer s3cret");
    EXPECT_EQ(reqs[0][http::field::host], "127.0.0.1:" + std::to_string(admin.port()));
}

TEST(CtlClient, JsonIsTheServersDocument) {
    fake_admin admin{admin_like};
    auto o = run_ctl({"breakers", "--json", "--token", "s3cret", "--admin", admin.url()});
    EXPECT_EQ(o.code, exit_ok) << o.err;
    EXPECT_EQ(o.out, breakers_body + "\n");
}

TEST(CtlClient, PostsTheMutationBody) {
    fake_admin admin{[](const request&) {
        return json(http::status::ok,
                    R"({"breaker":{"instance":"b1","breaker":"b1","key":"","action":"pause","state":"open","mode":"forced_open",)"
                    R"("mode_expires_at":null,"opened_at":1772366400000,"cooldown_ms":30000,"trips":1,"last_trip":null}})");
    }};
    auto o = run_ctl({"--admin", admin.url(), "--token", "t", "mode", "b1", "forced_open", "--reason", "maintenance window"});
    EXPECT_EQ(o.code, exit_ok) << o.err;
    EXPECT_NE(o.out.find("mode:       forced_open\n"), std::string::npos) << o.out;
    const auto reqs = admin.requests();
    ASSERT_EQ(reqs.size(), 1u);
    EXPECT_EQ(reqs[0].method(), http::verb::post);
    EXPECT_EQ(reqs[0].target(), "/v1/breakers/b1/mode");
    EXPECT_EQ(reqs[0][http::field::content_type], "application/json");
    EXPECT_EQ(reqs[0].body(), R"({"mode":"forced_open","reason":"maintenance window"})");
}

// The act was taken but its outcome is missing from the audit log: the table does not show
// the field, so stderr says it; the exit code is the act's.
TEST(CtlClient, AnUnrecordedAuditOutcomeIsAWarning) {
    fake_admin admin{[](const request&) {
        return json(http::status::ok,
                    R"({"breaker":{"instance":"b1","breaker":"b1","key":"","action":"pause","state":"open","mode":"forced_open",)"
                    R"("mode_expires_at":null,"opened_at":1772366400000,"cooldown_ms":30000,"trips":1,"last_trip":null},)"
                    R"j("audit_unrecorded":"the outcome could not be written to the audit log (disk full)"})j");
    }};
    auto o = run_ctl({"--admin", admin.url(), "--token", "t", "mode", "b1", "forced_open", "--reason", "hold"});
    EXPECT_EQ(o.code, exit_ok) << o.err;
    EXPECT_NE(o.err.find("warning: the action was taken, but its outcome could not be written to the audit log"),
              std::string::npos)
        << o.err;
}

TEST(CtlClient, UnauthorizedAndForbidden) {
    fake_admin admin{admin_like};
    auto o = run_ctl({"--admin", admin.url(), "breakers"});
    EXPECT_EQ(o.code, exit_failed);
    EXPECT_TRUE(o.out.empty());
    EXPECT_NE(o.err.find("breakerctl: unauthorized: set --token or BREAKERBOX_TOKEN"), std::string::npos) << o.err;
    EXPECT_TRUE(admin.requests().at(0)[http::field::authorization].empty());

    o = run_ctl({"--admin", admin.url(), "--token", "s3cret", "trip", "campaign-volume/spring", "--reason", "r"});
    EXPECT_EQ(o.code, exit_failed);
    EXPECT_NE(o.err.find("breakerctl: forbidden: your token's role cannot trip a breaker: role viewer"),
              std::string::npos)
        << o.err;
}

TEST(CtlClient, ConnectionRefused) {
    // A port that was just free: bind it, note it, close it.
    std::uint16_t port = 0;
    {
        asio::io_context ioc;
        tcp::acceptor a{ioc, tcp::endpoint{asio::ip::make_address("127.0.0.1"), 0}};
        port = a.local_endpoint().port();
    }
    const std::string url = "http://127.0.0.1:" + std::to_string(port);
    auto o = run_ctl({"--admin", url, "breakers"});
    EXPECT_EQ(o.code, exit_failed);
    EXPECT_EQ(o.err, "breakerctl: cannot reach the admin API at " + url + ": Connection refused\n");
    // The environment variable is used when --admin is absent.
    o = run_ctl({"health"}, environment{url, std::nullopt});
    EXPECT_EQ(o.code, exit_failed);
    EXPECT_NE(o.err.find(url), std::string::npos);
}

// A token never crosses the network in clear text: plain HTTP only to loopback. Refused
// before any connection (10.255.255.1 would otherwise time out, or worse, answer).
TEST(CtlClient, NoTokenOverPlainHttpOffLoopback) {
    auto o = run_ctl({"--admin", "http://10.255.255.1:9901", "breakers"}, environment{std::nullopt, "s3cret"});
    EXPECT_EQ(o.code, exit_failed);
    EXPECT_NE(o.err.find("refusing to send credentials over plain HTTP to 10.255.255.1: use https://"),
              std::string::npos) << o.err;
    o = run_ctl({"--admin", "admin.example:9901", "breakers"}, environment{std::nullopt, "s3cret"});
    EXPECT_NE(o.err.find("refusing to send credentials over plain HTTP"), std::string::npos) << o.err;
}

TEST(CtlClient, DeadlineCoversASilentServer) {
    fake_admin admin{nullptr, {}, {}, /*hang=*/true};
    const auto start = std::chrono::steady_clock::now();
    auto o = run_ctl({"--admin", admin.url(), "--timeout", "300ms", "breakers"});
    const auto took = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(o.code, exit_failed);
    EXPECT_NE(o.err.find("timed out after 300ms"), std::string::npos) << o.err;
    EXPECT_LT(took, std::chrono::seconds{5});
}

TEST(CtlClient, HealthMetricsAndBasePath) {
    fake_admin admin{[](const request& req) {
        if (req.target() == "/bb/healthz") {
            return json(http::status::ok, R"({"status":"ok"})");
        }
        if (req.target() == "/bb/readyz") {
            return json(http::status::ok, R"({"status":"ready"})");
        }
        response res{http::status::ok, 11};
        res.set(http::field::content_type, "text/plain; version=0.0.4");
        res.body() = "# TYPE breakerbox_connections gauge\nbreakerbox_connections 3\n";
        return res;
    }};
    auto o = run_ctl({"--admin", admin.url() + "/bb/", "health"});
    EXPECT_EQ(o.code, exit_ok) << o.err;
    EXPECT_EQ(o.out, "healthz: ok\nreadyz:  ready\n");
    o = run_ctl({"--admin", admin.url() + "/bb", "health", "--json"});
    EXPECT_EQ(o.out, R"({"healthz":{"status":"ok"},"readyz":{"status":"ready"}})" "\n");
    o = run_ctl({"--admin", admin.url() + "/bb", "metrics"});
    EXPECT_EQ(o.code, exit_ok);
    EXPECT_EQ(o.out, "# TYPE breakerbox_connections gauge\nbreakerbox_connections 3\n");
    EXPECT_EQ(admin.requests().back().target(), "/bb/metrics");
}

const std::string certs = BB_TEST_CERTS_DIR;

TEST(CtlClient, HttpsVerifiesTheServer) {
    fake_admin admin{admin_like, certs + "/server.pem", certs + "/server.key"};
    // Trusted through --cacert, by name (SNI + host name) and by address.
    for (auto host : {"localhost", "127.0.0.1"}) {
        auto o = run_ctl({"--admin", admin.url("https", host), "--cacert", certs + "/ca.pem", "--token", "s3cret",
                          "breakers", "--json"});
        EXPECT_EQ(o.code, exit_ok) << host << ": " << o.err;
        EXPECT_EQ(o.out, breakers_body + "\n");
    }
    // The system store does not know the development CA.
    auto o = run_ctl({"--admin", admin.url("https", "localhost"), "--token", "s3cret", "breakers"});
    EXPECT_EQ(o.code, exit_failed);
    EXPECT_NE(o.err.find("cannot reach the admin API at " + admin.url("https", "localhost")), std::string::npos);
    EXPECT_NE(o.err.find("certificate verify failed"), std::string::npos) << o.err;

    o = run_ctl({"--admin", admin.url("https", "localhost"), "--cacert", certs + "/absent.pem", "breakers"});
    EXPECT_EQ(o.code, exit_failed);
    EXPECT_NE(o.err.find("cannot read --cacert"), std::string::npos) << o.err;
}

TEST(CtlClient, HttpsRefusesTheWrongName) {
    fake_admin admin{admin_like, certs + "/wrong-name.pem", certs + "/wrong-name.key"};
    auto o = run_ctl({"--admin", admin.url("https", "localhost"), "--cacert", certs + "/ca.pem", "breakers"});
    EXPECT_EQ(o.code, exit_failed);
    EXPECT_NE(o.err.find("certificate verify failed"), std::string::npos) << o.err;
    EXPECT_TRUE(admin.requests().empty());
}

}  // namespace
}  // namespace bb::ctl
