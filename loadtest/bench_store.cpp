// Store benchmark (issue 5): holds per second with group commit next to one transaction
// per hold, at 1, 16 and 64 concurrent holders. Each holder does hold -> wait for the
// durable completion -> hold again (as a proxy connection waiting to answer 202), with a
// 2 KiB body, against a real file (synchronous=FULL, so every commit is an fsync).
//
//   bench_store [--dir /tmp] [--seconds 3] [--threads 1,16,64] [--body 2048]
//
// A plain timed program rather than Google Benchmark: what matters is throughput and the
// latency distribution under concurrency, which a per-iteration framework hides.

#include "store/database.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using steady = std::chrono::steady_clock;

struct run_result {
    double holds_per_s = 0;
    double p50_us = 0;
    double p99_us = 0;
    double max_us = 0;
    std::uint64_t holds = 0;
    std::uint64_t errors = 0;
    std::uint64_t transactions = 0;
};

// Waits for one completion without allocating a future per hold.
struct waiter {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    bool ok = false;
};

run_result run(const std::string& dir, bool group_commit, int threads, double seconds, std::size_t body_bytes) {
    const std::string path = dir + "/bench_" + std::to_string(::getpid()) + (group_commit ? "_group" : "_single") +
                             "_" + std::to_string(threads) + ".db";
    std::filesystem::remove(path);
    std::filesystem::remove(path + "-wal");
    std::filesystem::remove(path + "-shm");
    bb::store::store_options o;
    o.path = path;
    o.group_commit = group_commit;
    o.limits = {0, 0, 0, 0};  // measure the store, not the limits
    bb::real_clock clk;
    std::string err;
    auto db = bb::store::database::open(o, clk, &err);
    if (!db) {
        std::fprintf(stderr, "%s\n", err.c_str());
        std::exit(1);
    }
    const std::string body(body_bytes, 'b');
    std::atomic<bool> measuring{false};
    std::atomic<bool> stop{false};
    std::vector<std::vector<double>> lat(threads);
    std::vector<std::uint64_t> errors(threads, 0);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            waiter w;
            while (!stop.load(std::memory_order_relaxed)) {
                bb::store::held_request r;
                r.method = "POST";
                r.target = "/v3/mail/send";
                r.headers = {{"content-type", "application/json"}, {"x-campaign-id", "spring"}};
                r.body = body;
                r.route = "mail-send";
                r.upstream = "sendgrid";
                r.agent = "agent-" + std::to_string(t);
                r.rule = "recipients";
                r.breaker_instance = "campaign-volume/spring";
                r.failure_mode = "volume-spike";
                r.request_id = "req";
                {
                    std::lock_guard lock{w.mu};
                    w.done = false;
                }
                const auto start = steady::now();
                db->hold(std::move(r), [&w](const bb::store::result& res) {
                    std::lock_guard lock{w.mu};
                    w.done = true;
                    w.ok = res.ok;
                    w.cv.notify_one();
                });
                std::unique_lock lock{w.mu};
                w.cv.wait(lock, [&] { return w.done; });
                const auto us = std::chrono::duration<double, std::micro>(steady::now() - start).count();
                if (measuring.load(std::memory_order_relaxed)) {
                    if (w.ok) {
                        lat[t].push_back(us);
                    } else {
                        ++errors[t];
                    }
                }
            }
        });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds{500});  // warm-up
    const auto tx0 = db->stats().transactions;
    measuring = true;
    const auto t0 = steady::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    measuring = false;
    const auto elapsed = std::chrono::duration<double>(steady::now() - t0).count();
    const auto tx1 = db->stats().transactions;
    stop = true;
    for (auto& th : pool) {
        th.join();
    }
    std::vector<double> all;
    run_result res;
    for (int t = 0; t < threads; ++t) {
        all.insert(all.end(), lat[t].begin(), lat[t].end());
        res.errors += errors[t];
    }
    std::sort(all.begin(), all.end());
    res.holds = all.size();
    res.holds_per_s = static_cast<double>(all.size()) / elapsed;
    if (!all.empty()) {
        res.p50_us = all[all.size() / 2];
        res.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
        res.max_us = all.back();
    }
    res.transactions = tx1 - tx0;
    db.reset();
    std::filesystem::remove(path);
    std::filesystem::remove(path + "-wal");
    std::filesystem::remove(path + "-shm");
    std::filesystem::remove(path + ".lock");
    return res;
}

}  // namespace

int main(int argc, char** argv) {
    std::string dir = "/tmp";
    double seconds = 3;
    std::vector<int> threads = {1, 16, 64};
    std::size_t body = 2048;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        const std::string v = argv[i + 1];
        if (a == "--dir") {
            dir = v;
        } else if (a == "--seconds") {
            seconds = std::stod(v);
        } else if (a == "--body") {
            body = std::stoul(v);
        } else if (a == "--threads") {
            threads.clear();
            std::stringstream ss{v};
            for (std::string n; std::getline(ss, n, ',');) {
                threads.push_back(std::stoi(n));
            }
        } else {
            std::fprintf(stderr, "usage: bench_store [--dir D] [--seconds S] [--threads 1,16,64] [--body BYTES]\n");
            return 2;
        }
    }
    std::printf("| holders | mode | holds/s | p50 ms | p99 ms | max ms | holds/transaction | errors |\n");
    std::printf("|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for (int t : threads) {
        run_result r[2];
        for (int g = 0; g < 2; ++g) {
            const bool group = g == 0;
            r[g] = run(dir, group, t, seconds, body);
            std::printf("| %d | %s | %.0f | %.2f | %.2f | %.2f | %.1f | %llu |\n", t,
                        group ? "group commit" : "one txn per hold", r[g].holds_per_s, r[g].p50_us / 1000,
                        r[g].p99_us / 1000, r[g].max_us / 1000,
                        r[g].transactions ? static_cast<double>(r[g].holds) / r[g].transactions : 0.0,
                        static_cast<unsigned long long>(r[g].errors));
            std::fflush(stdout);
        }
        std::printf("| %d | **ratio** | **%.1fx** | | | | | |\n", t,
                    r[1].holds_per_s > 0 ? r[0].holds_per_s / r[1].holds_per_s : 0.0);
        std::fflush(stdout);
    }
    return 0;
}
