#pragma once
// The admin API (docs/admin-api.md): a separate listener on the control thread, bearer
// tokens checked against SHA-256 digests in constant time, roles viewer < operator <
// admin, every mutation audited in the store before it is answered. It never runs on a
// worker, and the data plane never waits on it.

#include "proxy/asio.hpp"

#include <openssl/types.h>  // SSL

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>

namespace boost::asio::ssl {
class context;
}

namespace bb {
struct config;
}

namespace bb::proxy {

class server;

class admin_server {
public:
    admin_server(asio::io_context& control, server& srv);
    ~admin_server();
    // Binds admin.address; throws std::runtime_error naming the address on failure.
    void start();
    // Closes the listener, and every connection waiting for its next request (a scraper's
    // keep-alive would otherwise hold the control thread for its 30 s idle timeout); one
    // being answered finishes its answer and then closes.
    void stop();
    std::uint16_t port() const { return port_; }
    // A new TLS context from `cfg`'s admin.tls (a renewed certificate, a rotated client CA:
    // a revoked operator CA stops being accepted at the next handshake). Open connections
    // keep the context they were accepted with. On error, or when admin.tls was switched on
    // or off (fixed until restart), the running context stays; returns the error, or "".
    std::string reload_tls(const bb::config& cfg);

private:
    asio::awaitable<void> accept_loop();
    asio::awaitable<void> session(tcp::socket socket);
    // `client`: the operator a verified client certificate names (name, role), if any.
    template <class Stream>
    // ssl: null for a plain listener; verified_under: the context its handshake used.
    asio::awaitable<void> serve(Stream& stream, SSL* ssl, std::shared_ptr<asio::ssl::context> verified_under);

    asio::io_context& control_;
    server& srv_;
    std::unique_ptr<tcp::acceptor> acceptor_;
    std::shared_ptr<asio::ssl::context> current_tls() const {
        std::lock_guard lock{tls_mu_};
        return tls_;
    }
    mutable std::mutex tls_mu_;
    std::shared_ptr<asio::ssl::context> tls_;  // under tls_mu_
    std::uint16_t port_ = 0;
    std::size_t sessions_ = 0;  // connections being served (control thread only)
    std::set<tcp::socket*> reading_;  // connections waiting for their next request (control thread only)
    bool stopped_ = false;
    bool refusing_ = false;     // at admin.max_connections: said once until below it again
};

// SIGHUP: reloads the config file the way POST /v1/config/reload applies one, except that a
// loosening is not refused (whoever can signal the process can edit its file), and that a
// file unchanged since breakerbox last read it does not undo a config applied after it
// through the API (a certificate-renewal hook signals without editing the file): that config
// is re-applied instead, re-reading its certificates and lists. After any
// config change in flight, the intent goes to the audit log first (actor signal:SIGHUP, the
// file and its SHA-256, the diff, what it loosens); the config is applied and stored as a
// version; the outcome follows. A file with errors is audited and changes nothing; so does
// a reload whose intent cannot be written. Control thread.
asio::awaitable<void> reload_on_signal(server& srv);

// At start from a file: when the file is not the last config version stored (one applied
// through the API, which does not write the file back, then a restart), says so in the log
// and the audit log with the diff, and stores the file as the new version, so that
// GET /v1/config and rollbacks number what really runs. Control thread.
asio::awaitable<void> record_startup_config(server& srv);

// The config a start from the file at `path` runs: the file's, unless the store at the
// file's store.path says the file is unchanged since breakerbox last read it (same SHA-256)
// and a config was applied after that (through the admin API or a rollback): then that
// latest version, so a restart does not undo an emergency change made through the API. An
// edited file always runs. Said in the log either way when they differ. *version: the
// stored version chosen, or 0 for the file.
std::shared_ptr<const config> choose_startup_config(const std::string& path, std::shared_ptr<const config> from_file,
                                                    std::int64_t* version);

// Prometheus text exposition (format 0.0.4) of everything breakerbox measures.
std::string render_metrics(server& srv);

}  // namespace bb::proxy
