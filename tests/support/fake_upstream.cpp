#include "tests/support/fake_upstream.hpp"

#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <mutex>
#include <sstream>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <filesystem>
#include <stdexcept>

namespace bb::test {

namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using bb::proxy::use_tuple;

behaviour respond(unsigned status, std::string body, std::string content_type) {
    behaviour b;
    b.res = response{static_cast<http::status>(status), 11};
    b.res.set(http::field::server, "fake-upstream");
    if (!body.empty()) {
        b.res.set(http::field::content_type, content_type);
    }
    b.res.body() = std::move(body);
    b.res.prepare_payload();
    return b;
}

behaviour respond_raw(std::string bytes, bool close_after) {
    behaviour b;
    b.what = behaviour::kind::raw;
    b.raw = std::move(bytes);
    b.close_after = close_after;
    return b;
}

struct fake_upstream::impl {
    asio::io_context ioc{1};
    tcp::acceptor acceptor{ioc};
    std::unique_ptr<asio::ssl::context> tls;
    std::thread thread;
    mutable std::mutex mu;
    mutable std::condition_variable cv;
    handler h;
    std::vector<received> reqs;
    std::uint64_t accepted = 0;
    std::uint64_t closed_by_peer = 0;
    std::vector<beast::tcp_stream*> live;           // guarded by running on ioc thread only

    void notify() { cv.notify_all(); }

    behaviour decide(const request& req, std::uint64_t conn) {
        handler copy;
        {
            std::lock_guard lock{mu};
            reqs.push_back({req, conn});
            copy = h;
        }
        notify();
        return copy ? copy(req) : respond(200, "{\"ok\":true}");
    }

    static void reset(tcp::socket& s) {
        // SO_LINGER with a zero timeout turns close() into an RST.
        ::linger lg{1, 0};
        ::setsockopt(s.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        boost::system::error_code ignored;
        s.close(ignored);
    }

    template <class Stream>
    asio::awaitable<void> serve(Stream& stream, tcp::socket& sock, std::uint64_t conn) {
        beast::flat_buffer buf;
        for (;;) {
            bb::proxy::request_parser parser;
            parser.body_limit(64 * 1024 * 1024);
            parser.header_limit(1024 * 1024);
            auto [ec, n] = co_await http::async_read(stream, buf, parser, use_tuple);
            if (ec) {
                {
                    std::lock_guard lock{mu};
                    ++closed_by_peer;
                }
                notify();
                co_return;
            }
            request req = parser.release();
            behaviour b = decide(req, conn);
            if (b.delay.count() > 0) {
                asio::steady_timer t{ioc, b.delay};
                co_await t.async_wait(use_tuple);
            }
            switch (b.what) {
                case behaviour::kind::respond: {
                    b.res.keep_alive(req.keep_alive() && !b.close_after);
                    auto [wec, wn] = co_await http::async_write(stream, b.res, use_tuple);
                    if (wec || !b.res.keep_alive()) {
                        boost::system::error_code ignored;
                        sock.shutdown(tcp::socket::shutdown_both, ignored);
                        sock.close(ignored);
                        co_return;
                    }
                    break;
                }
                case behaviour::kind::raw: {
                    auto [wec, wn] = co_await asio::async_write(stream, asio::buffer(b.raw), use_tuple);
                    if (wec || b.close_after) {
                        boost::system::error_code ignored;
                        sock.shutdown(tcp::socket::shutdown_both, ignored);
                        sock.close(ignored);
                        co_return;
                    }
                    break;
                }
                case behaviour::kind::reset_before_headers:
                    reset(sock);
                    co_return;
                case behaviour::kind::reset_mid_body: {
                    co_await asio::async_write(stream, asio::buffer(b.raw), use_tuple);
                    reset(sock);
                    co_return;
                }
                case behaviour::kind::close_after_request: {
                    boost::system::error_code ignored;
                    sock.shutdown(tcp::socket::shutdown_both, ignored);
                    sock.close(ignored);
                    co_return;
                }
                case behaviour::kind::hang: {
                    // Never answer; notice when the peer gives up.
                    char c;
                    auto [rec, rn] = co_await sock.async_read_some(asio::buffer(&c, 1), use_tuple);
                    (void)rn;
                    if (rec) {
                        {
                            std::lock_guard lock{mu};
                            ++closed_by_peer;
                        }
                        notify();
                    }
                    co_return;
                }
            }
        }
    }

    asio::awaitable<void> connection(tcp::socket socket, std::uint64_t conn) {
        if (tls) {
            beast::ssl_stream<beast::tcp_stream> stream{std::move(socket), *tls};
            auto [ec] = co_await stream.async_handshake(asio::ssl::stream_base::server, use_tuple);
            if (ec) {
                co_return;
            }
            // Asio lets SSL_write return after each record and flushes each one on its own;
            // without partial writes every record of one write leaves in one flush (one
            // segment on loopback), so tests can put several records in one read.
            SSL_clear_mode(stream.native_handle(), SSL_MODE_ENABLE_PARTIAL_WRITE);
            co_await serve(stream, stream.next_layer().socket(), conn);
        } else {
            beast::tcp_stream stream{std::move(socket)};
            live.push_back(&stream);
            co_await serve(stream, stream.socket(), conn);
            live.erase(std::find(live.begin(), live.end(), &stream));
        }
    }

    asio::awaitable<void> accept_loop() {
        for (;;) {
            auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
            if (ec) {
                co_return;
            }
            std::uint64_t id;
            {
                std::lock_guard lock{mu};
                id = ++accepted;
            }
            notify();
            asio::co_spawn(ioc, connection(std::move(socket), id), asio::detached);
        }
    }
};

void fake_upstream::max_tls_record(std::size_t bytes) {
    if (impl_->tls) {
        SSL_CTX_set_max_send_fragment(impl_->tls->native_handle(), static_cast<long>(bytes));
    }
}

void fake_upstream::tls12_ciphers(const std::string& list) {
    if (impl_->tls) {
        SSL_CTX_set_max_proto_version(impl_->tls->native_handle(), TLS1_2_VERSION);
        SSL_CTX_set_cipher_list(impl_->tls->native_handle(), list.c_str());
    }
}

fake_upstream::fake_upstream(handler h, std::string tls_cert, std::string tls_key) : impl_(std::make_unique<impl>()) {
    impl_->h = std::move(h);
    if (!tls_cert.empty()) {
        impl_->tls = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
        impl_->tls->use_certificate_chain_file(tls_cert);
        impl_->tls->use_private_key_file(tls_key, asio::ssl::context::pem);
    }
    const tcp::endpoint ep{asio::ip::make_address("127.0.0.1"), 0};
    impl_->acceptor.open(ep.protocol());
    impl_->acceptor.set_option(asio::socket_base::reuse_address(true));
    impl_->acceptor.bind(ep);
    impl_->acceptor.listen();
    port_ = impl_->acceptor.local_endpoint().port();
    asio::co_spawn(impl_->ioc, impl_->accept_loop(), asio::detached);
    impl_->thread = std::thread{[this] { impl_->ioc.run(); }};
}

fake_upstream::~fake_upstream() {
    impl_->ioc.stop();
    impl_->thread.join();
}

void fake_upstream::set_handler(handler h) {
    std::lock_guard lock{impl_->mu};
    impl_->h = std::move(h);
}

std::vector<received> fake_upstream::requests() const {
    std::lock_guard lock{impl_->mu};
    return impl_->reqs;
}

std::size_t fake_upstream::request_count() const {
    std::lock_guard lock{impl_->mu};
    return impl_->reqs.size();
}

std::uint64_t fake_upstream::connections_accepted() const {
    std::lock_guard lock{impl_->mu};
    return impl_->accepted;
}

std::uint64_t fake_upstream::connections_closed_by_peer() const {
    std::lock_guard lock{impl_->mu};
    return impl_->closed_by_peer;
}

bool fake_upstream::wait_for(const std::function<bool()>& pred, std::chrono::milliseconds deadline) const {
    const auto until = std::chrono::steady_clock::now() + deadline;
    std::unique_lock lock{impl_->mu};
    for (;;) {
        lock.unlock();
        if (pred()) {
            return true;
        }
        lock.lock();
        if (impl_->cv.wait_until(lock, until) == std::cv_status::timeout) {
            lock.unlock();
            return pred();
        }
    }
}

void fake_upstream::close_idle_connections() {
    std::promise<void> done;
    asio::post(impl_->ioc, [&] {
        for (auto* s : impl_->live) {
            boost::system::error_code ignored;
            s->socket().shutdown(tcp::socket::shutdown_both, ignored);
            s->socket().close(ignored);
        }
        done.set_value();
    });
    done.get_future().wait();
}

// ---- raw_client ----------------------------------------------------------------------

raw_client::raw_client(std::uint16_t port, std::chrono::milliseconds timeout) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) {
        throw std::runtime_error("socket() failed");
    }
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd_);
        fd_ = -1;
        throw std::runtime_error("connect() failed");
    }
}

raw_client::~raw_client() {
    close();
}

void raw_client::close() {
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
}

void raw_client::send(std::string_view bytes) {
    while (!bytes.empty()) {
        const auto n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n <= 0) {
            return;  // the server may have closed early; the test reads what it answered
        }
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
}

void raw_client::shutdown_write() {
    ::shutdown(fd_, SHUT_WR);
}

response raw_client::read_response(bool head_request) {
    bb::proxy::response_parser p;
    p.eager(true);
    p.body_limit(256 * 1024 * 1024);
    if (head_request) {
        p.skip(true);
    }
    for (;;) {
        if (!buf_.empty()) {
            boost::system::error_code ec;
            const auto used = p.put(asio::buffer(buf_), ec);
            buf_.erase(0, used);
            if (p.is_done()) {
                return p.release();
            }
            if (ec && ec != http::error::need_more) {
                return response{};
            }
        }
        char chunk[16384];
        const auto n = ::recv(fd_, chunk, sizeof chunk, 0);
        if (n <= 0) {
            if (n == 0 && p.is_header_done()) {
                boost::system::error_code ec;
                p.put_eof(ec);
                if (!ec && p.is_done()) {
                    return p.release();
                }
            }
            response none;
            none.result(0);
            return none;
        }
        buf_.append(chunk, static_cast<std::size_t>(n));
    }
}

bool raw_client::closed_by_server() {
    if (!buf_.empty()) {
        return false;
    }
    char c;
    const auto n = ::recv(fd_, &c, 1, 0);
    if (n > 0) {
        buf_.push_back(c);
        return false;
    }
    if (n == 0) {
        return true;
    }
    return errno == ECONNRESET;
}

response http_request(std::uint16_t port, http::verb method, std::string target, std::string body,
                      std::vector<std::pair<std::string, std::string>> headers) {
    raw_client c{port};
    request req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    for (auto& [k, v] : headers) {
        req.set(k, v);
    }
    req.body() = std::move(body);
    req.prepare_payload();
    std::ostringstream ss;
    ss << req;
    c.send(ss.str());
    return c.read_response(method == http::verb::head);
}

namespace {

// The directories temp_dir() made, removed when the test binary exits normally (a store file
// can be megabytes; thousands of runs filled /tmp). BB_KEEP_TEST_DIRS=1 keeps them to look at.
struct made_dirs {
    std::mutex mu;
    std::vector<std::string> dirs;
    ~made_dirs() {
        if (std::getenv("BB_KEEP_TEST_DIRS") != nullptr) {
            return;
        }
        for (const auto& d : dirs) {
            std::error_code ec;
            std::filesystem::remove_all(d, ec);
        }
    }
};

made_dirs& made() {
    static made_dirs m;
    return m;
}

}  // namespace

loopback_socket::loopback_socket(bool listening) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || (listening && ::listen(fd_, 8) != 0) ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        throw std::runtime_error("loopback_socket: cannot bind 127.0.0.1");
    }
    port_ = ntohs(a.sin_port);
    const timeval bound{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
}

loopback_socket::~loopback_socket() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

int loopback_socket::accept() const {
    const int conn = ::accept(fd_, nullptr, nullptr);
    if (conn >= 0) {
        const timeval bound{10, 0};
        ::setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
    }
    return conn;
}

std::string temp_dir() {
    // mkdtemp: always a new, empty directory. A name made of pid + counter was reused once
    // pids wrapped, handing a test the store and files an earlier run left behind.
    std::string tmpl = (std::filesystem::temp_directory_path() / "breakerbox-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
        throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
    }
    auto& m = made();
    std::lock_guard lock{m.mu};
    m.dirs.push_back(tmpl);
    return tmpl;
}

}  // namespace bb::test
