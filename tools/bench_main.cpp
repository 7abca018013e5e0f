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
#include <barrel_p2p/map.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

using namespace barrel_p2p;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

struct options {
  std::vector<std::size_t> sizes = {3, 5, 10, 20};
  std::size_t puts = 1000;
  double rate = 200;
  double throughput_seconds = 10;
  std::string json_path = "bench.json";
};

double us(steady::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

struct bench_cluster {
  boost::asio::io_context& io;
  std::vector<std::unique_ptr<node>> nodes;
  std::vector<std::shared_ptr<map>> maps;

  explicit bench_cluster(boost::asio::io_context& i) : io(i) {}

  task<> start(std::size_t n) {
    for (std::size_t k = 0; k < n; ++k) {
      node_config c;
      c.transport.node_id = "b" + std::to_string(k);
      c.transport.cluster_secret = "bench";
      c.log = [](const std::string&) {};
      if (k > 0) c.contacts.push_back(nodes[0]->self().address);
      nodes.push_back(std::make_unique<node>(io.get_executor(), c));
      co_await nodes.back()->start();
      maps.push_back(map::open(*nodes.back(), "bench"));
    }
    // Let the overlay settle: every node with a full or non-empty view.
    auto sched = make_real_scheduler(io.get_executor());
    for (int i = 0; i < 200; ++i) {
      bool ok = true;
      for (auto& nd : nodes) ok &= !nd->membership().active_view().empty();
      if (ok) break;
      co_await sched->sleep(10ms);
    }
    co_await sched->sleep(500ms);
  }
  task<> stop() {
    for (auto& nd : nodes) co_await nd->stop();
  }
};

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
  const auto gap = std::chrono::microseconds(static_cast<std::int64_t>(1e6 / o.rate));
  for (std::size_t k = 0; k < o.puts; ++k) {
    const auto origin = k % n;
    co_await c.maps[origin]->put("k" + std::to_string(k), k);
    returned[k] = {origin, steady::now()};
    co_await sched->sleep(std::chrono::duration_cast<duration>(gap));
  }
  co_await sched->sleep(1s);
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
  co_return json{{"bench", "latency"}, {"nodes", n}, {"puts", o.puts}, {"rate", o.rate}, {"missing", missing},
                 {"p50_us", p.p50}, {"p90_us", p.p90}, {"p99_us", p.p99}, {"max_us", p.max}};
}

task<json> throughput(boost::asio::io_context& io, std::size_t n, const options& o) {
  bench_cluster c(io);
  co_await c.start(n);
  const auto start = steady::now();
  const auto until = start + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(o.throughput_seconds));
  std::size_t k = 0;
  while (steady::now() < until) co_await c.maps[0]->put("t" + std::to_string(k++), k);
  const auto put_end = steady::now();
  auto sched = make_real_scheduler(io.get_executor());
  bool all = false;
  for (int i = 0; i < 6000 && !all; ++i) {
    all = true;
    for (auto& m : c.maps) all &= m->size() == k;
    if (!all) co_await sched->sleep(10ms);
  }
  const auto delivered = steady::now();
  co_await c.stop();
  co_return json{{"bench", "throughput"}, {"nodes", n}, {"puts", k},
                 {"puts_per_s", static_cast<double>(k) / std::chrono::duration<double>(put_end - start).count()},
                 {"all_delivered", all},
                 {"drain_ms", std::chrono::duration<double, std::milli>(delivered - put_end).count()}};
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
  co_await c.stop();
  co_return json{{"bench", "micro"}, {"ops", ops}, {"put_ns_per_op", us(t1 - t0) * 1000 / ops},
                 {"get_ns_per_op", us(t2 - t1) * 1000 / ops}, {"found", found}};
}

std::vector<std::size_t> parse_sizes(const std::string& s) {
  std::vector<std::size_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoul(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--nodes") o.sizes = parse_sizes(value());
    else if (a == "--puts") o.puts = std::stoul(value());
    else if (a == "--rate") o.rate = std::stod(value());
    else if (a == "--throughput-seconds") o.throughput_seconds = std::stod(value());
    else if (a == "--json") o.json_path = value();
    else {
      std::cerr << "usage: barrel-p2p-bench [--nodes 3,5,10,20] [--puts N] [--rate R] "
                   "[--throughput-seconds S] [--json FILE]\n";
      return 2;
    }
  }
  boost::asio::io_context io;
  json results = json::array();
  bool ok = true;
  boost::asio::co_spawn(io, [&]() -> task<> {
    std::printf("%-10s %6s %8s %10s %10s %10s %10s\n", "latency", "nodes", "puts", "p50 us", "p90 us", "p99 us", "max us");
    for (auto n : o.sizes) {
      auto r = co_await latency(io, n, o);
      std::printf("%-10s %6zu %8zu %10.0f %10.0f %10.0f %10.0f%s\n", "", n, o.puts, r["p50_us"].get<double>(),
                  r["p90_us"].get<double>(), r["p99_us"].get<double>(), r["max_us"].get<double>(),
                  r["missing"].get<std::size_t>() ? "  (some missing!)" : "");
      ok &= r["missing"].get<std::size_t>() == 0;
      results.push_back(std::move(r));
    }
    std::printf("\n%-10s %6s %10s %12s %10s\n", "throughput", "nodes", "puts", "puts/s", "drain ms");
    for (auto n : o.sizes) {
      auto r = co_await throughput(io, n, o);
      std::printf("%-10s %6zu %10zu %12.0f %10.0f%s\n", "", n, r["puts"].get<std::size_t>(),
                  r["puts_per_s"].get<double>(), r["drain_ms"].get<double>(),
                  r["all_delivered"].get<bool>() ? "" : "  (not all delivered!)");
      ok &= r["all_delivered"].get<bool>();
      results.push_back(std::move(r));
    }
    auto m = co_await micro(io);
    std::printf("\nmicro (one node): put %.0f ns/op, get %.0f ns/op\n", m["put_ns_per_op"].get<double>(),
                m["get_ns_per_op"].get<double>());
    results.push_back(std::move(m));
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
