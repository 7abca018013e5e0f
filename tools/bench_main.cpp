// barrel-p2p-bench: real TCP on loopback, several nodes in one process.
//
//   barrel-p2p-bench [--nodes 3,5,10,20] [--puts 1000] [--rate 200]
//                    [--throughput-seconds 10] [--json bench.json]
//
// latency:    puts at a low rate from rotating nodes; for each put, the time
//             from `co_await put` returning to the value's change event on
//             every other node (p50/p90/p99/max).
// throughput: one node puts back to back for a fixed time; puts/s
//             originated, and the time until every node has every key.
// micro:      one node alone, put and get in ns/op.
// persist:    one node, a persisted map, 64 writers for --throughput-seconds;
//             puts/s and how late a 1 ms timer on the executor fires.
//             For comparison runs: NOPERSIST=1 (same run, map in memory),
//             NOCOMPACT=1 (no compaction), BENCH_TRACE=1 (each late probe).
// --tls off,psk,cert runs latency and throughput once per transport mode
// (off = insecure plaintext, psk = the default, cert = mutual TLS with a
// throwaway CA); other sections use the first mode given.
#include <barrel_p2p/keyed_hash.hpp>
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/range_sync.hpp>
#include <barrel_p2p/replica_messages.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <random>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>
#include <unistd.h>

#include <barrel_p2p/crdt_wire.hpp>

#include "cli.hpp"
#include "dev_certs.hpp"

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags Asio's coroutine frame operator new/delete as mismatched once
// it inlines a coroutine (GCC PR 109224, a false positive).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

using namespace barrel_p2p;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

struct options {
  std::vector<std::size_t> sizes = {3, 5, 10, 20};
  std::size_t puts = 1000;
  double rate = 200;
  double throughput_seconds = 10;
  double writer_rate = 0;  // throughput: puts/s per writer (0: back to back)
  std::size_t threads = 1;  // throughput: threads the nodes are spread over
  std::string json_path = "bench.json";
  std::vector<std::size_t> sync_sizes = {10'000, 100'000};
  std::vector<std::size_t> state_sizes = {1'000, 100'000, 1'000'000};
  std::string only;  // run some sections (see usage)
  std::vector<std::string> tls_modes = {"psk"};
};

// The transport mode of the clusters being started, and for cert mode a
// throwaway CA whose certificates live in a temporary directory.
struct tls_setup {
  transport_security mode = transport_security::psk;
  std::string name = "psk";
  std::unique_ptr<dev_certs::authority> ca;
  std::filesystem::path dir;
  ~tls_setup() {
    std::error_code ignored;
    if (!dir.empty()) std::filesystem::remove_all(dir, ignored);
  }
  void use(const std::string& m) {
    name = m;
    if (m == "off") mode = transport_security::insecure_plaintext;
    else if (m == "psk") mode = transport_security::psk;
    else if (m == "cert") mode = transport_security::certificates;
    else throw std::invalid_argument("--tls: expected off, psk or cert, got '" + m + "'");
    if (mode == transport_security::certificates && !ca) {
      char tmpl[] = "/tmp/barrel-bench-certs-XXXXXX";
      dir = ::mkdtemp(tmpl);
      ca = std::make_unique<dev_certs::authority>("bench CA");
    }
  }
  void apply(node_config& c) const {
    c.transport.security = mode;
    if (mode == transport_security::certificates)
      c.transport.certificates = ca->issue(c.transport.node_id, dir);
  }
};
tls_setup tls;

double us(steady::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

task<replica_counters> replica_stats(std::shared_ptr<map> m) { co_return m->replica_stats(); }

// io_contexts, each run by a thread of its own, as nodes on other machines
// would have cores of their own. join() ends the threads; call it before
// the nodes on them are destroyed (a node destroyed while another thread
// ran its executor corrupted the heap now and then).
class worker_threads {
 public:
  explicit worker_threads(std::size_t count) {
    for (std::size_t t = 0; t < count; ++t) {
      contexts_.push_back(std::make_unique<boost::asio::io_context>(1));
      work_.push_back(boost::asio::make_work_guard(*contexts_.back()));
      threads_.emplace_back([ctx = contexts_.back().get()] { ctx->run(); });
    }
  }
  worker_threads(const worker_threads&) = delete;
  worker_threads& operator=(const worker_threads&) = delete;
  ~worker_threads() { join(); }
  executor at(std::size_t t) const { return contexts_[t]->get_executor(); }
  void join() {
    work_.clear();
    for (auto& ctx : contexts_) ctx->stop();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  std::vector<std::unique_ptr<boost::asio::io_context>> contexts_;
  std::vector<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
};

// `read(n)`, run on the node's executor: nodes may run on other threads,
// and their state is read where they run.
template <class F>
task<std::invoke_result_t<F&, node&>> read_on_node(node& n, F read) {
  co_return read(n);
}
template <class F>
task<std::invoke_result_t<F&, node&>> read_node(node& n, F read) {
  co_return co_await boost::asio::co_spawn(n.get_executor(), read_on_node(n, std::move(read)), boost::asio::use_awaitable);
}

struct bench_cluster {
  boost::asio::io_context& io;
  std::vector<std::unique_ptr<node>> nodes;
  std::vector<std::shared_ptr<map>> maps;

  explicit bench_cluster(boost::asio::io_context& i) : io(i) {}

  std::function<void(node_config&)> tweak;
  static inline std::function<void(node_config&)> tuning;  // from the command line, for every cluster

  // One more node, joined through the first, with its map open; on `ex`
  // (an executor of another thread) or the cluster's io_context. The
  // node's own work runs on its strand; this returns there.
  task<> add(std::optional<executor> ex = std::nullopt) {
    node_config c;
    c.transport.node_id = "b" + std::to_string(nodes.size());
    c.transport.cluster_secret = "bench-cluster-secret";
    c.log = [](const std::string&) {};
    tls.apply(c);
    if (tuning) tuning(c);
    if (tweak) tweak(c);
    if (!nodes.empty()) c.contacts.push_back(nodes[0]->self().address);
    nodes.push_back(std::make_unique<node>(ex ? *ex : executor(io.get_executor()), c));
    auto& n = *nodes.back();
    auto m = co_await boost::asio::co_spawn(n.get_executor(), open_on(n), boost::asio::use_awaitable);
    maps.push_back(std::move(m));
  }
  static task<std::shared_ptr<map>> open_on(node& n) {
    co_await n.start();
    co_return map::open(n, "bench");
  }

  // Where node k runs (nullopt: the cluster's io_context).
  std::function<std::optional<executor>(std::size_t)> place;

  task<> start(std::size_t n) {
    for (std::size_t k = 0; k < n; ++k) {
      std::optional<executor> where;  // (a ?: inside co_await's operand miscompiles with g++ 12)
      if (place) where = place(k);
      co_await add(where);
    }
    // Let the overlay settle: every node with a full or non-empty view.
    auto sched = make_real_scheduler(io.get_executor());
    for (int i = 0; i < 200; ++i) {
      bool ok = true;
      for (auto& nd : nodes)
        ok &= co_await read_node(*nd, [](node& x) { return !x.membership().active_view().empty(); });
      if (ok) break;
      co_await sched->sleep(10ms);
    }
    co_await sched->sleep(500ms);
  }
  task<> stop() {
    for (auto& nd : nodes) co_await boost::asio::co_spawn(nd->get_executor(), nd->stop(), boost::asio::use_awaitable);
  }
  // Polls every 10 ms until every map holds `keys` keys; false after 60 s.
  task<bool> every_map_holds(std::size_t keys) {
    auto sched = make_real_scheduler(io.get_executor());
    for (int i = 0; i < 6000; ++i) {
      if (std::all_of(maps.begin(), maps.end(), [&](const auto& m) { return m->size() == keys; })) co_return true;
      co_await sched->sleep(10ms);
    }
    co_return false;
  }
  std::uint64_t bytes_sent() const {
    std::uint64_t b = 0;
    for (auto& nd : nodes) b += nd->net().counters().bytes_sent;
    return b;
  }
};

// Resident set size of this process, from /proc/self/statm.
double rss_mib() {
  std::ifstream statm("/proc/self/statm");
  std::size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

// Arrival times of keys on one node, from its change events.
task<> record_arrivals(event_stream<map_event> events, std::map<std::string, steady::time_point>& seen) {
  while (auto ev = co_await events.next())
    if (ev->what == map_event::kind::put) seen.emplace(ev->key, steady::now());
}

struct percentiles {
  double p50, p90, p99, max;
};
percentiles summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v.empty() ? 0.0 : v[std::min(v.size() - 1, static_cast<std::size_t>(q * v.size()))]; };
  return {at(0.50), at(0.90), at(0.99), v.empty() ? 0.0 : v.back()};
}

task<json> latency(boost::asio::io_context& io, std::size_t n, const options& o) {
  bench_cluster c(io);
  co_await c.start(n);
  std::vector<std::map<std::string, steady::time_point>> seen(n);
  for (std::size_t i = 0; i < n; ++i)
    boost::asio::co_spawn(io, record_arrivals(c.maps[i]->subscribe(o.puts + 16), seen[i]), boost::asio::detached);
  auto sched = make_real_scheduler(io.get_executor());
  std::vector<std::pair<std::size_t, steady::time_point>> returned(o.puts);
  const auto bytes_before = c.bytes_sent();
  const auto gap = std::chrono::microseconds(static_cast<std::int64_t>(1e6 / o.rate));
  for (std::size_t k = 0; k < o.puts; ++k) {
    const auto origin = k % n;
    co_await c.maps[origin]->put("k" + std::to_string(k), k);
    returned[k] = {origin, steady::now()};
    co_await sched->sleep(std::chrono::duration_cast<duration>(gap));
  }
  co_await sched->sleep(1s);
  // Heartbeats and shuffles are in this figure too; at this rate they are
  // a few percent of it.
  const double wire_per_put = static_cast<double>(c.bytes_sent() - bytes_before) / static_cast<double>(o.puts);
  std::vector<double> lat;
  std::size_t missing = 0;
  for (std::size_t k = 0; k < o.puts; ++k) {
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (i == returned[k].first) continue;
      auto it = seen[i].find("k" + std::to_string(k));
      if (it == seen[i].end()) {
        ++missing;
        continue;
      }
      worst = std::max(worst, us(it->second - returned[k].second));
    }
    lat.push_back(worst);
  }
  co_await c.stop();
  auto p = summarize(lat);
  std::sort(lat.begin(), lat.end());  // kept whole for the latency CDF plot
  co_return json{{"bench", "latency"}, {"tls", tls.name}, {"nodes", n}, {"puts", o.puts}, {"rate", o.rate}, {"missing", missing},
                 {"p50_us", p.p50}, {"p90_us", p.p90}, {"p99_us", p.p99}, {"max_us", p.max},
                 {"wire_bytes_per_put", wire_per_put}, {"samples_us", lat},
                 {"wire_bytes_per_put_per_node", wire_per_put / static_cast<double>(n - 1)}};
}

// One writer: puts on one node until `until`, back to back, or `rate` a
// second (0: back to back).
task<> writer(std::shared_ptr<map> m, std::string prefix, steady::time_point until, double rate, std::size_t& count,
              std::size_t& running) {
  auto pace = make_real_scheduler(co_await boost::asio::this_coro::executor);
  const auto start = steady::now();
  while (steady::now() < until) {
    if (rate > 0) {
      const auto due = start + std::chrono::duration_cast<steady::duration>(
                                   std::chrono::duration<double>(static_cast<double>(count) / rate));
      if (const auto now = steady::now(); due > now)
        co_await pace->sleep(std::chrono::duration_cast<duration>(due - now));
    }
    co_await m->put(prefix + std::to_string(count), count);
    ++count;
  }
  --running;
}

// With `o.threads` > 1 the nodes are spread over that many threads (node k
// on thread k mod T, node 0 and the writers on the cluster's io_context),
// as nodes on separate machines would each have cores of their own.
task<json> throughput(boost::asio::io_context& io, std::size_t n, const options& o, bool all_nodes) {
  worker_threads others(o.threads - 1);
  bench_cluster c(io);
  c.place = [&](std::size_t k) -> std::optional<executor> {
    if (k % o.threads == 0) return std::nullopt;
    return others.at(k % o.threads - 1);
  };
  co_await c.start(n);
  const auto start = steady::now();
  const auto until = start + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(o.throughput_seconds));
  const std::size_t writers = all_nodes ? n : 1;
  std::vector<std::size_t> counts(writers, 0);
  std::size_t running = writers;
  for (std::size_t w = 0; w < writers; ++w)
    boost::asio::co_spawn(io, writer(c.maps[w], "t" + std::to_string(w) + "-", until, o.writer_rate, counts[w], running),
                          boost::asio::detached);
  auto wait = make_real_scheduler(io.get_executor());
  // Duplicates and first receipts of every node so far: sampled half way,
  // to tell a tree that settled during the run from one that never did.
  const auto receipts = [&]() -> task<std::pair<std::uint64_t, std::uint64_t>> {
    std::pair<std::uint64_t, std::uint64_t> r{0, 0};
    for (auto& nd : c.nodes) {
      const auto b = co_await read_node(*nd, [](node& x) { return x.broadcast().counters(); });
      r.first += b.duplicates;
      r.second += b.gossip_received - b.duplicates;
    }
    co_return r;
  };
  const auto half_way = start + (until - start) / 2;
  std::optional<std::pair<std::uint64_t, std::uint64_t>> at_half;
  while (running > 0) {
    co_await wait->sleep(1ms);
    if (!at_half && steady::now() >= half_way) at_half = co_await receipts();
  }
  std::size_t k = 0;
  for (auto x : counts) k += x;
  const auto put_end = steady::now();
  const auto at_end = co_await receipts();
  const auto late_firsts = at_half ? at_end.second - at_half->second : 0;
  const double late_duplicates =
      late_firsts ? static_cast<double>(at_end.first - at_half->first) / static_cast<double>(late_firsts) : 0.0;
  const bool all = co_await c.every_map_holds(k);
  const auto delivered = steady::now();
  const auto [duplicates, first_receipts] = co_await receipts();  // after the drain
  std::uint64_t drops = 0, waits = 0, grafts = 0, prunes = 0, announced = 0;
  std::uint64_t origin_prunes = 0, after_graft = 0, grafts_deferred = 0, answers_deferred = 0, eager_links = 0, lazy_links = 0;
  std::uint64_t graft_wait_ms = 0;
  struct tally {
    plumtree_counters broadcast;
    std::uint64_t drops = 0;
    std::size_t eager = 0, lazy = 0;
  };
  for (auto& nd : c.nodes) {
    const auto t = co_await read_node(*nd, [](node& x) {
      return tally{x.broadcast().counters(), x.net().counters().send_queue_drops, x.broadcast().eager_peers().size(),
                   x.broadcast().lazy_peers().size()};
    });
    // The shape of the tree at the end: with every link eager there is no
    // tree, and each node receives a copy from every neighbour.
    eager_links += t.eager;
    lazy_links += t.lazy;
    after_graft += t.broadcast.duplicates_after_graft;
    grafts_deferred += t.broadcast.grafts_deferred;
    answers_deferred += t.broadcast.graft_answers_deferred;
    announced += t.broadcast.congested_announcements;
    grafts += t.broadcast.graft_sent;
    prunes += t.broadcast.prune_sent;
    origin_prunes += t.broadcast.origin_prunes_sent;
    graft_wait_ms += t.broadcast.graft_wait_ms;
    drops += t.drops;
  }
  for (std::size_t i = 0; i < c.maps.size(); ++i)
    waits += (co_await boost::asio::co_spawn(c.nodes[i]->get_executor(), replica_stats(c.maps[i]), boost::asio::use_awaitable))
                 .backpressure_waits;
  co_await c.stop();
  others.join();  // before the nodes on them are destroyed
  c.maps.clear();
  c.nodes.clear();
  co_return json{{"bench", all_nodes ? "throughput_all" : "throughput"}, {"tls", tls.name}, {"nodes", n}, {"puts", k},
                 {"threads", o.threads},
                 {"writer_rate", o.writer_rate},
                 {"send_queue_drops", drops}, {"backpressure_waits", waits},
                 {"grafts", grafts}, {"prunes", prunes}, {"origin_prunes", origin_prunes},
                 {"congested_announcements", announced}, {"grafts_deferred", grafts_deferred}, {"graft_answers_deferred", answers_deferred},
                 {"duplicates_after_graft", after_graft}, {"eager_links_at_end", eager_links},
                 {"graft_wait_ms_avg", static_cast<double>(graft_wait_ms) / static_cast<double>(c.nodes.size())},
                 {"lazy_links_at_end", lazy_links},
                 {"duplicates_per_delivery_second_half", late_duplicates},
                 {"duplicates_per_delivery",
                  first_receipts ? static_cast<double>(duplicates) / static_cast<double>(first_receipts) : 0.0},
                 {"puts_per_s", static_cast<double>(k) / std::chrono::duration<double>(put_end - start).count()},
                 {"all_delivered", all},
                 {"drain_ms", std::chrono::duration<double, std::milli>(delivered - put_end).count()}};
}

// One writer paced at `rate` puts/s of `value`, from `from` to `until`.
// Each put's latency counts from the time it was due, not from when the
// previous one returned: a stalled put delays the ones behind it, and
// those delays are in the figures too.
task<> paced_writer(executor ex, std::shared_ptr<map> m, std::string prefix, json value, double rate,
                    steady::time_point from, steady::time_point until, std::vector<double>& latencies_us,
                    std::size_t& running) {
  auto sched = make_real_scheduler(ex);
  const auto gap = std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(1.0 / rate));
  std::size_t k = 0;
  for (auto due = from; due < until; due += gap, ++k) {
    if (const auto now = steady::now(); now < due)
      co_await sched->sleep(std::chrono::duration_cast<duration>(due - now));
    co_await m->put(prefix + std::to_string(k), value);
    latencies_us.push_back(us(steady::now() - due));
  }
  --running;
}

// One slow peer: node 0 stops reading from every peer for `hold` while the
// others write at a steady rate; their put latencies with node 0 reading
// (the first phase) and not reading (the second) are compared. Queues of
// 256 frames and 32 KiB values make node 0's queues fill within the hold.
task<json> slow_peer(boost::asio::io_context& io, std::size_t n, double rate, steady::duration hold) {
  bench_cluster c(io);
  c.tweak = [](node_config& cfg) { cfg.transport.send_queue_limit = 256; };
  co_await c.start(n);
  const json value = std::string(32 * 1024, 'v');
  std::vector<std::vector<double>> before(n), during(n);
  std::size_t running = 0;
  auto sched = make_real_scheduler(io.get_executor());
  const auto phase = [&](std::vector<std::vector<double>>& out, const char* tag) -> task<> {
    const auto from = steady::now(), until = from + hold;
    running = n - 1;
    for (std::size_t w = 1; w < n; ++w)
      boost::asio::co_spawn(io,
                            paced_writer(io.get_executor(), c.maps[w], std::string(tag) + std::to_string(w) + "-", value, rate, from,
                                         until, out[w], running),
                            boost::asio::detached);
    while (running > 0) co_await sched->sleep(1ms);
  };
  co_await phase(before, "a");
  std::vector<read_hold> holds;
  for (std::size_t w = 1; w < n; ++w) holds.push_back(c.nodes[0]->net().hold_reading(c.nodes[w]->self().id));
  co_await phase(during, "b");
  const auto released = steady::now();
  holds.clear();
  std::size_t keys = 0;
  for (std::size_t w = 1; w < n; ++w) keys += before[w].size() + during[w].size();
  const bool all = co_await c.every_map_holds(keys);
  const auto caught_up = steady::now();
  std::uint64_t drops = 0, announced = 0;
  for (auto& nd : c.nodes) {
    drops += nd->net().counters().send_queue_drops;
    announced += nd->broadcast().counters().congested_announcements;
  }
  co_await c.stop();
  const auto flat = [](const std::vector<std::vector<double>>& v) {
    std::vector<double> all;
    for (const auto& x : v) all.insert(all.end(), x.begin(), x.end());
    return summarize(all);
  };
  const auto a = flat(before), b = flat(during);
  co_return json{{"bench", "slow_peer"}, {"tls", tls.name}, {"nodes", n}, {"writers", n - 1},
                 {"rate_per_writer", rate}, {"value_bytes", 32 * 1024}, {"send_queue_limit", 256},
                 {"hold_ms", std::chrono::duration<double, std::milli>(hold).count()},
                 {"reading_p50_us", a.p50}, {"reading_p99_us", a.p99}, {"reading_max_us", a.max},
                 {"held_p50_us", b.p50}, {"held_p99_us", b.p99}, {"held_max_us", b.max},
                 {"delay_p99_us", b.p99 - a.p99}, {"send_queue_drops", drops}, {"congested_announcements", announced},
                 {"all_delivered", all},
                 {"catch_up_ms", std::chrono::duration<double, std::milli>(caught_up - released).count()}};
}

task<json> micro(boost::asio::io_context& io) {
  bench_cluster c(io);
  co_await c.start(1);
  auto& m = *c.maps[0];
  constexpr std::size_t ops = 100'000;
  auto t0 = steady::now();
  for (std::size_t k = 0; k < ops; ++k) co_await m.put("m" + std::to_string(k % 10'000), k);
  auto t1 = steady::now();
  std::size_t found = 0;
  for (std::size_t k = 0; k < ops; ++k) found += m.get("m" + std::to_string(k % 10'000)).has_value();
  auto t2 = steady::now();
  // The same puts from code running on the node's executor: no hop to the
  // strand and back (other keys, so both loops start from an empty map;
  // this one finds the broadcast cache already holding the first's).
  auto on_strand = [&m]() -> task<> {
    for (std::size_t k = 0; k < ops; ++k) co_await m.put("n" + std::to_string(k % 10'000), k);
  };
  auto t3 = steady::now();
  co_await boost::asio::co_spawn(c.nodes[0]->get_executor(), on_strand(), boost::asio::use_awaitable);
  auto t4 = steady::now();
  // The hop alone: onto the node's executor and back with nothing to do,
  // as a put from another executor makes it (map::put's co_spawn).
  auto nothing = []() -> task<> { co_return; };
  for (std::size_t k = 0; k < ops; ++k)
    co_await boost::asio::co_spawn(c.nodes[0]->get_executor(), nothing(), boost::asio::use_awaitable);
  auto t5 = steady::now();
  co_await c.stop();
  // What the keyed hash of peer-chosen strings costs against std::hash
  // (keys like the map's, 5-6 bytes; docs/concepts/security.md).
  std::vector<std::string> keys;
  for (std::size_t k = 0; k < 1'000; ++k) keys.push_back("m" + std::to_string(k));
  std::size_t sink = 0;
  auto h0 = steady::now();
  for (int round = 0; round < 1'000; ++round)
    for (const auto& k : keys) sink += keyed_string_hash{}(k);
  auto h1 = steady::now();
  for (int round = 0; round < 1'000; ++round)
    for (const auto& k : keys) sink += std::hash<std::string>{}(k);
  auto h2 = steady::now();
  const double hashes = 1'000.0 * keys.size();
  co_return json{{"bench", "micro"}, {"ops", ops}, {"put_ns_per_op", us(t1 - t0) * 1000 / ops},
                 {"put_on_strand_ns_per_op", us(t4 - t3) * 1000 / ops}, {"hop_ns", us(t5 - t4) * 1000 / ops},
                 {"get_ns_per_op", us(t2 - t1) * 1000 / ops}, {"found", found},
                 {"siphash_ns", us(h1 - h0) * 1000 / hashes}, {"std_hash_ns", us(h2 - h1) * 1000 / hashes},
                 {"hash_sink", sink & 1}};
}

// One writer of the persisted bench: overwrites its own 1,000 keys in turn,
// so that the map stays at a steady size (a growing map's rehashes would
// show in the probe and hide what this measures: the disk).
task<> overwriter(std::shared_ptr<map> m, std::string prefix, steady::time_point until, std::size_t& count,
                  std::size_t& running) {
  while (steady::now() < until) {
    co_await m->put(prefix + std::to_string(count % 1000), count);
    ++count;
  }
  --running;
}

// A persisted map on one node: 64 writers put back to back for `seconds`
// (64,000 keys, so a compaction about every 64,000 records). Puts per
// second, and the worst lateness of a 1 ms timer on the same executor
// meanwhile: does disk I/O block it?
task<json> persisted(boost::asio::io_context& io, double seconds) {
  const auto dir = std::filesystem::temp_directory_path() / ("barrel-p2p-bench-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  bench_cluster c(io);
  c.tweak = [&](node_config& cfg) { cfg.data_dir = dir; };
  co_await c.start(1);
  map_options o;
  o.persist = !std::getenv("NOPERSIST");
  if (std::getenv("NOCOMPACT")) o.snapshot_every = 1u << 30;
  auto m = map::open(*c.nodes[0], "durable", o);
  constexpr std::size_t writers = 64;
  const auto until = steady::now() + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(seconds));
  std::vector<std::size_t> counts(writers, 0);
  std::size_t running = writers;
  const auto start = steady::now();
  for (std::size_t w = 0; w < writers; ++w)
    boost::asio::co_spawn(io, overwriter(m, "d" + std::to_string(w) + "-", until, counts[w], running),
                          boost::asio::detached);
  // The probe: a 1 ms timer; how late does it fire? Counted over the
  // whole run, and apart after the first 3 s: by then the map holds its
  // 64,000 keys and the broadcast cache its 100,000 messages, so what is
  // left is the steady state (growing hash tables rehash on the executor).
  auto sched = make_real_scheduler(io.get_executor());
  double worst_late_us = 0, steady_worst_late_us = 0;
  std::size_t probes = 0, probes_over_2ms = 0;
  while (running > 0) {
    const auto asked = steady::now();
    co_await sched->sleep(1ms);
    const auto l = us(steady::now() - asked) - 1000.0;
    worst_late_us = std::max(worst_late_us, l);
    if (asked - start > 3s) {
      steady_worst_late_us = std::max(steady_worst_late_us, l);
      ++probes;
      probes_over_2ms += l > 2000;
    }
    if (l > 2000 && std::getenv("BENCH_TRACE"))
      std::fprintf(stderr, "late at %.3f s: %.1f ms\n", us(asked - start) / 1e6, l / 1000);
  }
  const auto elapsed = std::chrono::duration<double>(steady::now() - start).count();
  std::size_t puts = 0;
  for (auto x : counts) puts += x;
  co_await m->close();
  co_await c.stop();
  std::filesystem::remove_all(dir);
  co_return json{{"bench", "persisted"}, {"writers", writers}, {"puts", puts},
                 {"puts_per_s", static_cast<double>(puts) / elapsed}, {"probe_worst_late_us", worst_late_us},
                 {"steady_probe_worst_late_us", steady_worst_late_us}, {"steady_probes", probes},
                 {"steady_probes_over_2ms", probes_over_2ms}};
}

// Read on a node's executor (co_spawned there). Plain coroutines rather
// than capturing coroutine lambdas, which GCC 12 can destroy twice.

// Full sync: one node holds `keys` keys; a second joins. Time from its
// start to holding every key, and the bytes it received. With
// `two_threads`, the joiner runs on an io_context of its own thread, as on
// a second machine: each side's work overlaps the other's; on one thread
// the figure is the sum of both sides' CPU.
task<json> full_sync(boost::asio::io_context& io, std::size_t keys, bool two_threads) {
  worker_threads joiner_thread(two_threads ? 1 : 0);
  bench_cluster c(io);
  c.tweak = [](node_config& cfg) { cfg.replicas.anti_entropy_interval = std::chrono::hours(1); };
  co_await c.start(1);
  for (std::size_t k = 0; k < keys; ++k) co_await c.maps[0]->put("s" + std::to_string(k), k);
  if (std::getenv("BENCH_PAUSE")) {  // attach a profiler to the sync alone
    std::fprintf(stderr, "full sync of %zu keys starts in 3 s (pid %d)\n", keys, static_cast<int>(::getpid()));
    auto s = make_real_scheduler(io.get_executor());
    co_await s->sleep(3s);
  }
  const auto t0 = steady::now();
  std::optional<executor> joiner_at;  // (no ?: inside co_await's operand: g++ 12 miscompiles it)
  if (two_threads) joiner_at = joiner_thread.at(0);
  co_await c.add(joiner_at);
  auto sched = make_real_scheduler(io.get_executor());
  while (c.maps[1]->size() < keys && steady::now() - t0 < 120s) co_await sched->sleep(1ms);
  const auto t1 = steady::now();
  const auto received =
      co_await read_node(*c.nodes[1], [](node& x) { return x.net().counters().bytes_received; });
  const bool complete = c.maps[1]->size() == keys;
  // How the sync ran: exchanges opened and crossed on each side, entries pushed.
  json exchanges = json::array();
  for (std::size_t i = 0; i < c.maps.size(); ++i) {
    const auto st =
        co_await boost::asio::co_spawn(c.nodes[i]->get_executor(), replica_stats(c.maps[i]), boost::asio::use_awaitable);
    exchanges.push_back({{"opened", st.reconcile_rounds}, {"crossed", st.reconcile_crossed},
                         {"entries_sent", st.reconcile_items_sent}});
  }
  co_await c.stop();
  joiner_thread.join();  // before its node is destroyed
  c.maps.clear();
  c.nodes.clear();
  co_return json{{"bench", "full_sync"}, {"keys", keys}, {"threads", two_threads ? 2 : 1}, {"complete", complete},
                 {"ms", std::chrono::duration<double, std::milli>(t1 - t0).count()},
                 {"exchanges", std::move(exchanges)},
                 {"bytes_received", received},
                 {"bytes_per_key", static_cast<double>(received) / static_cast<double>(keys)}};
}

json sync_stages_once(std::size_t keys);

// The stages of a full sync without the network, in ns per entry: the
// holder writing its snapshots (crdt_wire::write_items, batches of the
// replica's reconcile_batch_items), the joiner merging them into its state
// as the replica does (parse_sync_view, then crdt_wire::ingest_cbor into a
// map that tracks sync items), and for comparison through a json tree
// (parse_replica_message, crdt_wire::ingest). What the map adds on top
// (projection, events) is not in these figures. The best of three
// runs: on a shared 2-core machine single runs vary by half.
json sync_stages(std::size_t keys) {
  json best;
  for (int run = 0; run < 3; ++run) {
    auto r = sync_stages_once(keys);
    if (best.is_null()) {
      best = std::move(r);
      continue;
    }
    for (const char* stage : {"encode_ns_per_entry", "merge_ns_per_entry", "json_merge_ns_per_entry"})
      best[stage] = std::min(best[stage].get<double>(), r[stage].get<double>());
    best["complete"] = best["complete"].get<bool>() && r["complete"].get<bool>();
  }
  return best;
}

json sync_stages_once(std::size_t keys) {
  hlc_clock clock;
  ormap holder;
  holder.track_sync_items();
  for (std::size_t k = 0; k < keys; ++k) holder.add("s" + std::to_string(k), k, "b0", clock.now());  // the bench nodes' id length
  std::vector<sync_item> items;
  holder.sync_items()->items(0, holder.sync_items()->size(), items);
  const std::size_t batch = replica_config{}.reconcile_batch_items;
  std::vector<std::vector<std::uint8_t>> messages;
  std::size_t entry_bytes = 0;
  const auto t0 = steady::now();
  for (std::size_t from = 0; from < items.size(); from += batch) {
    const std::vector<sync_item> part(items.begin() + static_cast<std::ptrdiff_t>(from),
                                      items.begin() + static_cast<std::ptrdiff_t>(std::min(items.size(), from + batch)));
    const auto body = encode_sync("bench", byte_slice(share_bytes(*crdt_wire::write_items(holder, part))));
    entry_bytes += body.tail.size();
    std::vector<std::uint8_t> flat(body.head.begin(), body.head.end());
    flat.insert(flat.end(), body.tail.bytes().begin(), body.tail.bytes().end());
    messages.push_back(std::move(flat));
  }
  const auto t1 = steady::now();
  // The joiner's way: the snapshot found in the frame, its entries read
  // from the bytes.
  ormap joiner;
  joiner.track_sync_items();
  for (const auto& m : messages) {
    const auto view = parse_sync_view(m);
    (void)crdt_wire::ingest_cbor(joiner, std::span(m).subspan(view->offset, view->length), clock);
  }
  const auto t2 = steady::now();
  // The json way, for comparison: the frame decoded into a tree, then ingested.
  ormap via_json;
  via_json.track_sync_items();
  for (const auto& m : messages)
    (void)crdt_wire::ingest(via_json, std::get<replica_sync>(*parse_replica_message(m).message).snapshot, clock);
  const auto t3 = steady::now();
  const auto per_entry = [&](steady::duration d) { return us(d) * 1000 / static_cast<double>(keys); };
  return json{{"bench", "sync_stages"}, {"keys", keys}, {"complete", joiner == holder && via_json == holder},
              {"entry_bytes", entry_bytes}, {"encode_ns_per_entry", per_entry(t1 - t0)},
              {"merge_ns_per_entry", per_entry(t2 - t1)}, {"json_merge_ns_per_entry", per_entry(t3 - t2)}};
}

// Anti-entropy on an idle, converged 3-node map of `keys` keys: bytes per
// round (each round pulls one peer's whole snapshot).
task<json> anti_entropy_cost(boost::asio::io_context& io, std::size_t keys) {
  bench_cluster c(io);
  c.tweak = [](node_config& cfg) { cfg.replicas.anti_entropy_interval = 500ms; };
  co_await c.start(3);
  for (std::size_t k = 0; k < keys; ++k) co_await c.maps[0]->put("a" + std::to_string(k), k);
  auto sched = make_real_scheduler(io.get_executor());
  while ((c.maps[1]->size() < keys || c.maps[2]->size() < keys)) co_await sched->sleep(10ms);
  co_await sched->sleep(1s);
  std::uint64_t rounds0 = 0;
  for (auto& m : c.maps) rounds0 += m->replica_stats().anti_entropy_rounds;
  const auto bytes0 = c.bytes_sent();
  co_await sched->sleep(5s);
  std::uint64_t rounds1 = 0;
  for (auto& m : c.maps) rounds1 += m->replica_stats().anti_entropy_rounds;
  const auto bytes = c.bytes_sent() - bytes0;
  co_await c.stop();
  const auto rounds = rounds1 - rounds0;
  co_return json{{"bench", "anti_entropy"}, {"keys", keys}, {"rounds", rounds}, {"bytes", bytes},
                 {"bytes_per_round", rounds ? static_cast<double>(bytes) / static_cast<double>(rounds) : 0.0}};
}

// Range reconciliation alone (no network): two indexes of `items` items
// each, equal, then one differing item. Bytes are the CBOR of each message;
// CPU is this process's, for building and answering them.
json reconcile_cost(std::size_t items) {
  std::mt19937_64 rng(42);
  sync_index a(1), b(2);
  const auto built0 = steady::now();
  for (std::size_t i = 0; i < items; ++i) {
    const sync_item it{(std::uint64_t{1} << 40) + rng() % (std::uint64_t{1} << 36), rng()};
    a.insert(it);
    b.insert(it);
  }
  const double build_s = std::chrono::duration<double>(steady::now() - built0).count() / 2;
  struct exchange {
    std::size_t messages = 0, bytes = 0, sent = 0;
    double cpu_ms = 0;
  };
  const auto run = [](sync_index& x, sync_index& y) {
    exchange e;
    const auto c0 = std::clock();
    std::optional<range_sync_message> next = range_sync_start(x);
    sync_index* sides[2] = {&x, &y};
    std::size_t turn = 1;
    while (next && e.messages < 64) {
      const auto wire = encode_cbor(encode_range_sync(*next));
      ++e.messages;
      e.bytes += wire.size();
      auto parsed = parse_range_sync(*decode_cbor(wire));
      auto step = range_sync_answer(*sides[turn], *parsed.message);
      for (const auto& item : step.send) sides[1 - turn]->insert(item);
      e.sent += step.send.size();
      next = std::move(step.reply);
      turn = 1 - turn;
    }
    e.cpu_ms = 1000.0 * static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    return e;
  };
  const auto equal = run(a, b);
  b.insert({(std::uint64_t{1} << 41), 7});  // one newer write on one side
  const auto one = run(a, b);
  return json{{"bench", "reconcile"}, {"items", items}, {"index_build_s", build_s},
              {"equal_messages", equal.messages}, {"equal_bytes", equal.bytes}, {"equal_cpu_ms", equal.cpu_ms},
              {"one_diff_messages", one.messages}, {"one_diff_round_trips", (one.messages + 1) / 2},
              {"one_diff_bytes", one.bytes}, {"one_diff_cpu_ms", one.cpu_ms}, {"one_diff_items_sent", one.sent}};
}

// Resident memory: the process before any node, one idle node, and the
// growth per key of a replicated map (100,000 keys of small values).
task<json> memory(boost::asio::io_context& io) {
  const double before = rss_mib();
  bench_cluster c(io);
  co_await c.start(1);
  auto sched = make_real_scheduler(io.get_executor());
  co_await sched->sleep(200ms);
  const double idle = rss_mib();
  constexpr std::size_t keys = 100'000;
  for (std::size_t k = 0; k < keys; ++k) co_await c.maps[0]->put("user:" + std::to_string(k), k);
  const double full = rss_mib();
  co_await c.stop();
  co_return json{{"bench", "memory"}, {"process_mib", before}, {"idle_node_mib", idle - before},
                 {"keys", keys}, {"bytes_per_key", (full - idle) * 1024 * 1024 / keys}};
}

// What connections that never finish a handshake cost one node: first as
// many as its handshake caps admit (256, from 8 source addresses), then
// `extra` more that are refused on accept. Resident memory is read after
// each wave, while the first wave is still inside its handshake timeout.
task<json> handshake_flood(boost::asio::io_context& io, std::size_t extra) {
  bench_cluster c(io);
  c.tweak = [](node_config& cfg) { cfg.transport.handshake_timeout = 30s; };
  co_await c.start(1);
  auto& n = *c.nodes[0];
  auto sched = make_real_scheduler(io.get_executor());
  const auto target = boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), n.self().address.port);
  std::vector<boost::asio::ip::tcp::socket> held;
  auto open_from = [&](std::size_t count, std::size_t first_address, bool start_tls = false) -> task<std::size_t> {
    std::size_t ok = 0;
    for (std::size_t i = 0; i < count; ++i) {
      boost::asio::ip::tcp::socket s(io);
      boost::system::error_code ec;
      s.open(boost::asio::ip::tcp::v4(), ec);
      const auto source = "127.0.0." + std::to_string(first_address + i / 32);
      s.bind({boost::asio::ip::make_address(source), 0}, ec);
      auto [cec] = co_await s.async_connect(target, boost::asio::as_tuple(boost::asio::use_awaitable));
      if (!cec) {
        ++ok;
        if (start_tls) {  // the first bytes of a TLS record, then silence
          static const std::uint8_t record_start[3] = {0x16, 0x03, 0x01};
          (void)co_await boost::asio::async_write(s, boost::asio::buffer(record_start),
                                                  boost::asio::as_tuple(boost::asio::use_awaitable));
        }
        held.push_back(std::move(s));
      }
    }
    co_return ok;
  };
  co_await sched->sleep(200ms);
  const double base = rss_mib();
  const auto admitted = n.config().transport.max_pending_handshakes;
  co_await open_from(admitted, 2);  // 127.0.0.2 .. 127.0.0.9, 32 each
  co_await sched->sleep(500ms);
  const double pending = rss_mib();
  co_await open_from(extra, 20);  // over the caps: closed on accept
  co_await sched->sleep(500ms);
  const double flooded = rss_mib();
  const auto& counters = n.net().counters();
  const auto over = counters.handshake_failures_by_reason[static_cast<std::size_t>(handshake_failure::over_capacity)];
  held.clear();  // the node sees them close and frees their slots
  co_await sched->sleep(500ms);
  const double base2 = rss_mib();
  co_await open_from(admitted, 40, true);  // handshakes begun, never finished
  co_await sched->sleep(500ms);
  const double stalled = rss_mib();
  held.clear();
  co_await c.stop();
  co_return json{{"bench", "handshake_flood"}, {"tls", tls.name}, {"pending", admitted},
                 {"bytes_per_pending_handshake", (pending - base) * 1024 * 1024 / static_cast<double>(admitted)},
                 {"bytes_per_stalled_handshake", (stalled - base2) * 1024 * 1024 / static_cast<double>(admitted)},
                 {"extra_connections", extra}, {"refused_over_capacity", over},
                 {"extra_mib", flooded - pending}};
}

// Cost of a local put and of merging a remote delta with the map already
// holding `size` keys (should not grow with the size).
task<json> state_scaling(boost::asio::io_context& io, std::size_t size) {
  bench_cluster c(io);
  co_await c.start(1);
  auto& m = *c.maps[0];
  for (std::size_t k = 0; k < size; ++k) co_await m.put("p" + std::to_string(k), k);
  constexpr std::size_t ops = 20'000;
  auto t0 = steady::now();
  for (std::size_t k = 0; k < ops; ++k) co_await m.put("q" + std::to_string(k), k);
  auto t1 = steady::now();
  co_await c.stop();
  // The merge path a remote delta takes: validate, absorb the clock, merge.
  hlc_clock clock;
  ormap state;
  for (std::size_t k = 0; k < size; ++k) state.add("p" + std::to_string(k), k, "peer", clock.now());
  std::vector<json> deltas;
  deltas.reserve(ops);
  for (std::size_t k = 0; k < ops; ++k) {
    ormap scratch;
    deltas.push_back(crdt_wire::encode_map(scratch.add("r" + std::to_string(k), k, "peer", clock.now())));
  }
  auto t2 = steady::now();
  for (const auto& d : deltas) (void)crdt_wire::ingest(state, d, clock);
  auto t3 = steady::now();
  co_return json{{"bench", "state_scaling"}, {"keys", size}, {"put_ns_per_op", us(t1 - t0) * 1000 / ops},
                 {"merge_ns_per_op", us(t3 - t2) * 1000 / ops}};
}

}  // namespace

// Broadcast knobs from the command line, applied to every node of every cluster.
void add_tuning(std::function<void(node_config&)> f) {
  bench_cluster::tuning = [before = bench_cluster::tuning, f](node_config& c) {
    if (before) before(c);
    f(c);
  };
}

int main(int argc, char** argv) {
  options o;
  cli::flag_reader args(argc, argv);
  auto value = [&] { return args.value(); };
  try {
    while (args.next()) {
      const auto& a = args.flag();
      if (a == "--nodes") o.sizes = cli::parse_list<std::size_t>(value());
      else if (a == "--puts") o.puts = std::stoul(value());
      else if (a == "--rate") o.rate = std::stod(value());
      else if (a == "--throughput-seconds") o.throughput_seconds = std::stod(value());
      else if (a == "--writer-rate") o.writer_rate = std::stod(value());
      else if (a == "--threads") {
        o.threads = std::stoul(value());
        if (o.threads == 0 || o.threads > 64) throw std::invalid_argument("--threads must be in [1, 64]");
      }
      else if (a == "--json") o.json_path = value();
      else if (a == "--sync-keys") o.sync_sizes = cli::parse_list<std::size_t>(value());
      else if (a == "--state-keys") o.state_sizes = cli::parse_list<std::size_t>(value());
      else if (a == "--only") o.only = value();
      else if (a == "--prune-after") {
        const auto n = static_cast<std::uint32_t>(std::stoul(value()));
        add_tuning([n](node_config& c) { c.broadcast.prune_after_duplicates = n; });
      } else if (a == "--graft-timeout-ms") {
        const auto ms = std::chrono::milliseconds(std::stol(value()));
        add_tuning([ms](node_config& c) { c.broadcast.graft_timeout = ms; });
      } else if (a == "--prune-span-lags") {
        const double f = std::stod(value());
        add_tuning([f](node_config& c) { c.broadcast.prune_span_lags = f; });
      } else if (a == "--prune-grace-ms") {
        const auto ms = std::chrono::milliseconds(std::stol(value()));
        add_tuning([ms](node_config& c) { c.broadcast.prune_grace = ms; });
      } else if (a == "--fetch-answers-join-tree") {
        const bool on = value() == "1";
        add_tuning([on](node_config& c) { c.broadcast.fetch_answers_join_tree = on; });
      } else if (a == "--origin-copies-end-runs") {
        const bool on = value() == "1";
        add_tuning([on](node_config& c) { c.broadcast.origin_copies_end_runs = on; });
      } else if (a == "--origin-prune-span-lags") {
        const double f = std::stod(value());
        add_tuning([f](node_config& c) { c.broadcast.origin_prune_span_lags = f; });
      } else if (a == "--origin-prune-after") {
        const auto n = static_cast<std::uint32_t>(std::stoul(value()));
        add_tuning([n](node_config& c) { c.broadcast.origin_prune_after_duplicates = n; });
      } else if (a == "--flood-after-graft") {
        const bool on = value() == "1";
        add_tuning([on](node_config& c) { c.broadcast.flood_after_graft = on; });
      } else if (a == "--adaptive-graft") {
        const bool on = value() == "1";
        add_tuning([on](node_config& c) { c.broadcast.adaptive_graft_timeout = on; });
      }
      else if (a == "--slow-peer-after") {
        const auto ms = std::chrono::milliseconds(std::stol(value()));
        add_tuning([ms](node_config& c) { c.broadcast.slow_peer_after = ms; });
      } else if (a == "--congested-fill") {
        const double f = std::stod(value());
        add_tuning([f](node_config& c) {
          c.broadcast.congested_fill = f;
          c.broadcast.write_room_fill = std::min(c.broadcast.write_room_fill, f);  // must stay at most f
        });
      } else if (a == "--write-room-fill") {
        const double f = std::stod(value());
        add_tuning([f](node_config& c) { c.broadcast.write_room_fill = f; });
      }
      else if (a == "--tls") o.tls_modes = cli::parse_list<std::string>(value());
      else {
        std::cerr << "usage: barrel-p2p-bench [--nodes 3,5,10,20] [--puts N] [--rate R] "
                     "[--throughput-seconds S] [--writer-rate R] [--threads T] [--sync-keys 10000,100000] [--state-keys 1000,100000,1000000]\n"
                     "                       [--only latency,throughput,slowpeer,sync,reconcile,memory,state,flood,persist,micro] [--json FILE]\n"
                     "                       [--tls off,psk,cert] [--prune-after N] [--origin-prune-after N] [--flood-after-graft 0|1] [--adaptive-graft 0|1]\n"
                     "                       [--graft-timeout-ms MS] [--prune-span-lags F] [--prune-grace-ms MS] [--fetch-answers-join-tree 0|1] [--origin-copies-end-runs 0|1] [--origin-prune-span-lags F]\n"
                     "                       [--slow-peer-after MS] [--congested-fill F] [--write-room-fill F]\n";
        return 2;
      }
    }
    if (o.tls_modes.empty()) throw std::invalid_argument("--tls: no mode");
    for (const auto& m : o.tls_modes) tls.use(m);  // validates every mode up front
    tls.use(o.tls_modes.front());
  } catch (const std::exception& e) {
    std::cerr << "barrel-p2p-bench: " << e.what() << '\n';
    return 2;
  }
  boost::asio::io_context io;
  json results = json::array();
  bool ok = true;
  const auto only = cli::parse_list<std::string>(o.only);
  const auto want = [&](const char* section) {
    return only.empty() || std::find(only.begin(), only.end(), section) != only.end();
  };
  boost::asio::co_spawn(io, [&]() -> task<> {
    if (want("latency")) {
      std::printf("%-10s %6s %8s %9s %9s %9s %9s %12s\n", "latency", "nodes", "puts", "p50 us", "p90 us", "p99 us",
                  "max us", "wire B/put");
      for (const auto& mode : o.tls_modes)
      for (auto n : o.sizes) {
        tls.use(mode);
        auto r = co_await latency(io, n, o);
        std::printf("%-10s %6zu %8zu %9.0f %9.0f %9.0f %9.0f %12.0f%s\n", ("  " + mode).c_str(), n, o.puts, r["p50_us"].get<double>(),
                    r["p90_us"].get<double>(), r["p99_us"].get<double>(), r["max_us"].get<double>(),
                    r["wire_bytes_per_put"].get<double>(),
                    r["missing"].get<std::size_t>() ? "  (some missing!)" : "");
        ok &= r["missing"].get<std::size_t>() == 0;
        results.push_back(std::move(r));
      }
    }
    if (want("throughput")) {
      std::printf("\n%-14s %6s %10s %12s %10s %8s %10s %10s %10s\n", "throughput", "nodes", "puts", "puts/s",
                  "drain ms", "drops", "bp waits", "dup/recv", "announced");
      for (const auto& mode : o.tls_modes)
      for (bool all_nodes : {false, true})
        for (auto n : o.sizes) {
          tls.use(mode);
          auto r = co_await throughput(io, n, o, all_nodes);
          const auto label = mode + (all_nodes ? " all nodes" : " one node");
          std::printf("%-14s %6zu %10zu %12.0f %10.0f %8llu %10llu %10.3f %10llu%s\n", label.c_str(), n,
                      r["puts"].get<std::size_t>(), r["puts_per_s"].get<double>(), r["drain_ms"].get<double>(),
                      static_cast<unsigned long long>(r["send_queue_drops"].get<std::uint64_t>()),
                      static_cast<unsigned long long>(r["backpressure_waits"].get<std::uint64_t>()),
                      r["duplicates_per_delivery"].get<double>(),
                      static_cast<unsigned long long>(r["congested_announcements"].get<std::uint64_t>()),
                      r["all_delivered"].get<bool>() ? "" : "  (not all delivered!)");
          ok &= r["all_delivered"].get<bool>();
          results.push_back(std::move(r));
        }
    }
    tls.use(o.tls_modes.front());
    if (want("slowpeer")) {
      for (auto n : o.sizes) {
        if (n < 3) continue;
        auto r = co_await slow_peer(io, n, o.rate, 3s);
        std::printf("\nslow peer (%s, %zu nodes, %zu writers at %.0f puts/s of 32 KiB): put p50/p99/max %.2f/%.2f/%.2f ms "
                    "while node 0 reads, %.2f/%.2f/%.2f ms while it reads nothing for 3 s (p99 delay %.2f ms); "
                    "%llu announced instead of pushed, %llu drops, caught up %.0f ms after reading again%s\n",
                    tls.name.c_str(), n, n - 1, o.rate, r["reading_p50_us"].get<double>() / 1000.0,
                    r["reading_p99_us"].get<double>() / 1000.0, r["reading_max_us"].get<double>() / 1000.0,
                    r["held_p50_us"].get<double>() / 1000.0, r["held_p99_us"].get<double>() / 1000.0,
                    r["held_max_us"].get<double>() / 1000.0, r["delay_p99_us"].get<double>() / 1000.0,
                    static_cast<unsigned long long>(r["congested_announcements"].get<std::uint64_t>()),
                    static_cast<unsigned long long>(r["send_queue_drops"].get<std::uint64_t>()),
                    r["catch_up_ms"].get<double>(), r["all_delivered"].get<bool>() ? "" : "  (not all delivered!)");
        ok &= r["all_delivered"].get<bool>();
        results.push_back(std::move(r));
      }
    }
    if (want("sync")) {
      std::printf("\n%-10s %8s %10s %10s %14s %10s\n", "full sync", "threads", "keys", "ms", "bytes", "B/key");
      for (auto k : o.sync_sizes)
        for (const bool two : {false, true}) {
          auto r = co_await full_sync(io, k, two);
          std::printf("%-10s %8d %10zu %10.0f %14llu %10.1f%s\n", "", two ? 2 : 1, k, r["ms"].get<double>(),
                      static_cast<unsigned long long>(r["bytes_received"].get<std::uint64_t>()),
                      r["bytes_per_key"].get<double>(), r["complete"].get<bool>() ? "" : "  (incomplete!)");
          ok &= r["complete"].get<bool>();
          results.push_back(std::move(r));
        }
      for (auto k : o.sync_sizes) {
        auto r = sync_stages(k);
        std::printf("sync stages, %zu keys (%zu bytes of entries), ns per entry: holder encodes %.0f, joiner merges %.0f "
                    "from the bytes (%.0f through a json tree)%s\n",
                    k, r["entry_bytes"].get<std::size_t>(), r["encode_ns_per_entry"].get<double>(),
                    r["merge_ns_per_entry"].get<double>(), r["json_merge_ns_per_entry"].get<double>(),
                    r["complete"].get<bool>() ? "" : "  (incomplete!)");
        ok &= r["complete"].get<bool>();
        results.push_back(std::move(r));
      }
      auto ae = co_await anti_entropy_cost(io, 10'000);
      std::printf("anti-entropy, idle converged map of 10000 keys: %.0f bytes per round (%llu rounds)\n",
                  ae["bytes_per_round"].get<double>(), static_cast<unsigned long long>(ae["rounds"].get<std::uint64_t>()));
      results.push_back(std::move(ae));
    }
    if (want("reconcile")) {
      for (std::size_t n : {std::size_t{10'000}, std::size_t{1'000'000}}) {
        auto r = reconcile_cost(n);
        std::printf("\nreconcile, %zu items per side (index built in %.2f s): equal sets %zu message(s), %zu bytes, "
                    "%.2f ms CPU; one difference %zu messages (%zu round trips), %zu bytes, %.2f ms CPU, %zu item sent\n",
                    n, r["index_build_s"].get<double>(), r["equal_messages"].get<std::size_t>(),
                    r["equal_bytes"].get<std::size_t>(), r["equal_cpu_ms"].get<double>(),
                    r["one_diff_messages"].get<std::size_t>(), r["one_diff_round_trips"].get<std::size_t>(),
                    r["one_diff_bytes"].get<std::size_t>(), r["one_diff_cpu_ms"].get<double>(),
                    r["one_diff_items_sent"].get<std::size_t>());
        results.push_back(std::move(r));
      }
    }
    if (want("memory")) {
      auto r = co_await memory(io);
      std::printf("\nmemory: process %.1f MiB before any node, idle node +%.1f MiB, %.0f bytes per key (100k keys)\n",
                  r["process_mib"].get<double>(), r["idle_node_mib"].get<double>(), r["bytes_per_key"].get<double>());
      results.push_back(std::move(r));
    }
    if (want("state")) {
      std::printf("\n%-10s %10s %14s %16s\n", "state", "keys", "put ns/op", "merge ns/op");
      for (auto k : o.state_sizes) {
        auto r = co_await state_scaling(io, k);
        std::printf("%-10s %10zu %14.0f %16.0f\n", "", k, r["put_ns_per_op"].get<double>(),
                    r["merge_ns_per_op"].get<double>());
        results.push_back(std::move(r));
      }
    }
    if (want("flood")) {
      auto r = co_await handshake_flood(io, 5'000);
      std::printf("\nhandshake flood (%s): %.0f bytes per silent connection, %.0f per stalled TLS handshake "
                  "(%zu pending); %zu more connections refused on accept (%llu counted), memory +%.1f MiB\n",
                  tls.name.c_str(), r["bytes_per_pending_handshake"].get<double>(),
                  r["bytes_per_stalled_handshake"].get<double>(), r["pending"].get<std::size_t>(),
                  r["extra_connections"].get<std::size_t>(),
                  static_cast<unsigned long long>(r["refused_over_capacity"].get<std::uint64_t>()),
                  r["extra_mib"].get<double>());
      results.push_back(std::move(r));
    }
    if (want("persist")) {
      auto r = co_await persisted(io, o.throughput_seconds);
      std::printf("\npersisted map, 64 writers on one node: %.0f puts/s; a 1 ms timer on the executor fired at worst "
                  "%.2f ms late (after 3 s: %.2f ms, %zu of %zu probes over 2 ms)\n",
                  r["puts_per_s"].get<double>(), r["probe_worst_late_us"].get<double>() / 1000.0,
                  r["steady_probe_worst_late_us"].get<double>() / 1000.0, r["steady_probes_over_2ms"].get<std::size_t>(),
                  r["steady_probes"].get<std::size_t>());
      results.push_back(std::move(r));
    }
    if (want("micro")) {
      auto m = co_await micro(io);
      std::printf(
          "\nmicro (one node): put %.0f ns/op (%.0f from the node's executor; the hop alone %.0f), get %.0f ns/op; "
          "keyed hash %.1f ns, std::hash %.1f ns\n",
          m["put_ns_per_op"].get<double>(), m["put_on_strand_ns_per_op"].get<double>(), m["hop_ns"].get<double>(),
          m["get_ns_per_op"].get<double>(), m["siphash_ns"].get<double>(), m["std_hash_ns"].get<double>());
      results.push_back(std::move(m));
    }
    io.stop();
  }, [&](std::exception_ptr e) {
    if (e) {
      try { std::rethrow_exception(e); } catch (const std::exception& ex) { std::cerr << "bench failed: " << ex.what() << '\n'; }
      ok = false;
      io.stop();
    }
  });
  io.run();
  std::ofstream(o.json_path) << results.dump(2) << '\n';
  std::cout << "wrote " << o.json_path << '\n';
  return ok ? 0 : 1;
}
