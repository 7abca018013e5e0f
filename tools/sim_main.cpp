// barrel-p2p-sim: runs N nodes of the real membership, broadcast and replica
// code over the simulated network, on virtual time, deterministic from a
// seed. Each scenario prints JSON lines (one per measurement) and a summary
// table. Same seed, same output (wall-clock figures go to stderr).
//
//   barrel-p2p-sim --scenario form|fail|steady|churn|partition [--nodes N] [--seed S]
//   barrel-p2p-sim --scenario nemesis [--seeds A..B] [--nodes N] [--fault-seconds S] [--trace] [--sabotage]
//                  [--skip-faults K,...] [--shrink]
//                  [--broadcasts K] [--fail 10,20,...] [--churn-per-s R] [--churn-seconds S]
//                  [tuning and bounds of the steady scenario: see docs/reference/simulator.md]
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/keyed_hash.hpp>
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include "cli.hpp"
#include "sim_nemesis.hpp"

#include <chrono>
#include <cstdio>
#include <iostream>
#include <algorithm>
#include <cstdlib>
#include <map>
#include <optional>
#include <queue>
#include <set>
#include <sstream>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

// A probe broadcast: its number, as one CBOR unsigned integer.
shared_bytes probe_payload(std::uint64_t k) { return share_bytes(cbor_writer().uint(k).take()); }

struct options {
  std::string scenario = "form";
  std::size_t nodes = 1000;
  std::uint64_t seed = 1;
  std::size_t broadcasts = 1000;
  std::vector<int> fail_percents = {10, 20, 30, 40, 50, 60, 70, 80, 90, 95};
  double churn_per_s = 2;     // churn: crashes per second (and as many joins)
  std::size_t churn_seconds = 60;
  // Tuning, to reproduce what was tried (defaults: the library's).
  std::optional<double> random_promotion;
  std::optional<std::uint64_t> graft_timeout_ms;
  std::optional<double> graft_jitter;
  std::optional<bool> lazy_new_links;
  std::optional<std::uint64_t> repair_graft_ms;
  std::optional<std::uint64_t> optimization_threshold;
  std::optional<std::uint64_t> optimization_interval_ms;
  std::uint64_t jitter_ms = 0;  // per-message link jitter
  std::uint64_t gap_ms = 50;  // steady: between broadcasts
  std::optional<std::uint32_t> prune_after;
  std::optional<bool> flood_after_graft;
  // steady: exit 1 when a figure is above its bound (the suite's regression guard)
  std::optional<double> max_rmr, max_graft_prune, min_complete;
  std::optional<std::uint64_t> max_ldh;
  // form, fail, partition: the same kind of bounds (the suite's guard)
  std::optional<std::uint64_t> max_connect_ms;  // form: overlay connected after the last join
  std::optional<double> min_reliability;        // fail: every failure size, after 5 rounds
  std::optional<std::uint64_t> max_converge_ms; // partition: replicas equal after the heal
  bool trace_tree = false;
  double loss = 0;  // steady: message loss on every link once formed
  std::size_t origins = 0;  // steady: broadcasts come from this many fixed nodes (0: any node)
  bool nodes_given = false;
  sim::nemesis_options nemesis;
};

constexpr duration link_latency{5};

struct cluster {
  boost::asio::io_context io;
  sim_network net;
  std::vector<std::unique_ptr<node>> nodes;
  // Deliveries of the probe tag: message number -> (node index -> hops)
  std::map<std::uint64_t, std::map<std::size_t, std::uint64_t>> delivered;

  cluster(std::size_t n, const options& o) : net(io, [&] {
    sim_config c;
    c.seed = o.seed;
    c.latency = link_latency;
    c.jitter = duration{o.jitter_ms};  // 0 by default: exact hop counts from delivery times
    return c;
  }()) {
    for (std::size_t i = 0; i < n; ++i) {
      node_config c;
      const auto seed = o.seed;
      c.transport.node_id = "n" + std::to_string(i);
      if (o.random_promotion) c.membership.random_promotion = *o.random_promotion;
      if (o.graft_timeout_ms) c.broadcast.graft_timeout = duration{*o.graft_timeout_ms};
      if (o.graft_jitter) c.broadcast.graft_jitter = *o.graft_jitter;
      if (o.prune_after) c.broadcast.prune_after_duplicates = *o.prune_after;
      if (o.flood_after_graft) c.broadcast.flood_after_graft = *o.flood_after_graft;
      if (o.optimization_threshold) c.broadcast.optimization_threshold = *o.optimization_threshold;
      if (o.optimization_interval_ms) c.broadcast.optimization_interval = duration{*o.optimization_interval_ms};
      if (o.lazy_new_links) c.broadcast.lazy_new_links = *o.lazy_new_links;
      if (o.repair_graft_ms) c.broadcast.repair_graft_timeout = duration{*o.repair_graft_ms};
      c.membership.seed = seed * 1'000'003 + i + 1;
      c.broadcast.seed = seed * 2'000'003 + i + 1;
      c.replicas.seed = seed * 3'000'017 + i + 1;
      c.clocks.seed = seed * 4'000'037 + i + 1;
      c.log = [](const std::string&) {};
      nodes.push_back(std::make_unique<node>(net, c));
      auto* me = this;
      nodes.back()->broadcast().subscribe(
          "probe", [me, i](const plumtree::delivery& d) {
            if (auto k = cbor_reader(d.payload.bytes()).uint()) me->delivered[*k].emplace(i, d.hops);
          });
    }
  }

  bool alive(std::size_t i) const { return net.alive(nodes[i]->id()); }

  // Node i joins through a random earlier node, one every 10 ms; the first
  // `count` nodes (all by default).
  void form(std::uint64_t seed, std::size_t count = SIZE_MAX) {
    boost::asio::co_spawn(io, [this, seed, count]() -> task<> {
      random_engine rng(seed);
      for (std::size_t i = 0; i < std::min(count, nodes.size()); ++i) {
        co_await nodes[i]->start();
        if (i == 0) continue;
        peer_address contact{"sim", static_cast<std::uint16_t>(std::uniform_int_distribution<std::size_t>(0, i - 1)(rng))};
        co_await nodes[i]->membership().join(contact);
        co_await nodes[i]->sched().sleep(10ms);
      }
    }, boost::asio::detached);
  }

  std::vector<std::vector<std::size_t>> graph() const {
    std::map<std::string, std::size_t> index;
    for (std::size_t i = 0; i < nodes.size(); ++i) index[nodes[i]->id()] = i;
    std::vector<std::vector<std::size_t>> g(nodes.size());
    for (std::size_t i = 0; i < nodes.size(); ++i)
      if (alive(i))
        for (const auto& d : nodes[i]->membership().active_view()) g[i].push_back(index.at(d.id));
    return g;
  }

  // Connected and symmetric: what settle() polls every 100 ms of virtual
  // time. Cheaper than stats(): no index map, sets, clustering or passive
  // views (node ids are "n<index>").
  bool overlay_connected() const {
    std::vector<std::vector<std::size_t>> g(nodes.size());
    std::size_t live = 0, first = SIZE_MAX;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (!alive(i)) continue;
      ++live;
      if (first == SIZE_MAX) first = i;
      for (const auto& d : nodes[i]->membership().active_view())
        g[i].push_back(static_cast<std::size_t>(std::strtoull(d.id.c_str() + 1, nullptr, 10)));
      if (g[i].empty()) return false;
    }
    for (std::size_t i = 0; i < g.size(); ++i)
      for (auto j : g[i])
        if (j >= g.size() || !alive(j) || std::find(g[j].begin(), g[j].end(), i) == g[j].end()) return false;
    if (live == 0) return true;
    std::vector<char> seen(g.size(), 0);
    std::vector<std::size_t> todo{first};
    seen[first] = 1;
    std::size_t reached = 0;
    while (!todo.empty()) {
      const auto v = todo.back();
      todo.pop_back();
      ++reached;
      for (auto w : g[v])
        if (!seen[w]) seen[w] = 1, todo.push_back(w);
    }
    return reached == live;
  }

  struct overlay_stats {
    std::size_t live = 0, asymmetric = 0, reached = 0, min_active = SIZE_MAX, max_active = 0;
    double avg_active = 0, avg_passive = 0, clustering = 0, avg_path = 0;
    bool connected() const { return reached == live && asymmetric == 0; }
  };

  overlay_stats stats(bool paths) const {
    overlay_stats s;
    auto g = graph();
    std::vector<std::set<std::size_t>> sets(g.size());
    for (std::size_t i = 0; i < g.size(); ++i) sets[i] = {g[i].begin(), g[i].end()};
    std::size_t first = SIZE_MAX;
    for (std::size_t i = 0; i < g.size(); ++i) {
      if (!alive(i)) continue;
      ++s.live;
      if (first == SIZE_MAX) first = i;
      s.min_active = std::min(s.min_active, g[i].size());
      s.max_active = std::max(s.max_active, g[i].size());
      s.avg_active += static_cast<double>(g[i].size());
      s.avg_passive += static_cast<double>(nodes[i]->membership().passive_view().size());
      for (auto j : g[i]) s.asymmetric += !sets[j].contains(i) || !alive(j);
      // Clustering coefficient: links among neighbours / possible links.
      std::size_t links = 0;
      for (auto a : g[i])
        for (auto b : g[i]) links += a < b && sets[a].contains(b);
      const auto k = g[i].size();
      if (k >= 2) s.clustering += 2.0 * static_cast<double>(links) / static_cast<double>(k * (k - 1));
    }
    if (s.live == 0) return s;
    s.avg_active /= static_cast<double>(s.live);
    s.avg_passive /= static_cast<double>(s.live);
    s.clustering /= static_cast<double>(s.live);
    auto bfs = [&](std::size_t from) {
      std::vector<int> dist(g.size(), -1);
      std::queue<std::size_t> q;
      dist[from] = 0;
      q.push(from);
      while (!q.empty()) {
        auto v = q.front();
        q.pop();
        for (auto w : g[v])
          if (alive(w) && dist[w] < 0) dist[w] = dist[v] + 1, q.push(w);
      }
      return dist;
    };
    auto d0 = bfs(first);
    for (std::size_t i = 0; i < g.size(); ++i) s.reached += alive(i) && d0[i] >= 0;
    if (paths) {  // average shortest path from up to 50 sources
      double total = 0;
      std::size_t pairs = 0, sources = 0;
      for (std::size_t i = first; i < g.size() && sources < 50; i += std::max<std::size_t>(1, g.size() / 50)) {
        if (!alive(i)) continue;
        ++sources;
        auto d = bfs(i);
        for (std::size_t j = 0; j < g.size(); ++j)
          if (j != i && d[j] > 0) total += d[j], ++pairs;
      }
      s.avg_path = pairs ? total / static_cast<double>(pairs) : 0;
    }
    return s;
  }

  std::uint64_t total(std::uint64_t plumtree_counters::*field) const {
    std::uint64_t n = 0;
    for (auto& nd : nodes) n += nd->broadcast().counters().*field;
    return n;
  }
  std::uint64_t total(std::uint64_t hyparview_counters::*field) const {
    std::uint64_t n = 0;
    for (auto& nd : nodes) n += nd->membership().counters().*field;
    return n;
  }

  // The broadcast tree as the nodes see it: directed eager links, how many
  // are mutual, and the cycles (links - nodes + components) of the graph of
  // links eager in at least one direction.
  struct tree_stats {
    std::size_t directed = 0, mutual = 0, one_way = 0, components = 0, cycles = 0;
  };
  tree_stats tree() const {
    std::map<std::string, std::size_t> index;
    for (std::size_t i = 0; i < nodes.size(); ++i) index[nodes[i]->id()] = i;
    std::vector<std::set<std::size_t>> eager(nodes.size());
    for (std::size_t i = 0; i < nodes.size(); ++i)
      if (alive(i))
        for (const auto& p : nodes[i]->broadcast().eager_peers()) eager[i].insert(index.at(p));
    tree_stats t;
    std::vector<std::size_t> parent(nodes.size());
    for (std::size_t i = 0; i < parent.size(); ++i) parent[i] = i;
    auto find = [&](std::size_t x) {
      while (parent[x] != x) x = parent[x] = parent[parent[x]];
      return x;
    };
    std::size_t undirected = 0, live = 0;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (!alive(i)) continue;
      ++live;
      for (auto j : eager[i]) {
        ++t.directed;
        const bool back = eager[j].contains(i);
        if (back) t.mutual += i < j;
        else ++t.one_way;
        if (i < j || !back) {
          ++undirected;
          parent[find(i)] = find(j);
        }
      }
    }
    for (std::size_t i = 0; i < nodes.size(); ++i) t.components += alive(i) && find(i) == i;
    t.cycles = undirected + t.components - live;
    return t;
  }

  struct broadcast_result {
    double reliability = 0;  ///< live nodes reached / live nodes, averaged over the messages
    double complete = 0;     ///< share of the messages that reached every live node
    double rmr = 0;          ///< payload messages / (deliveries - 1) - 1, over the batch
    std::uint64_t ldh = 0;   ///< greatest hop count of any delivery
  };

  // One broadcast from a random live node, not measured (traffic).
  void send_unmeasured(std::uint64_t k, random_engine& rng) {
    std::vector<std::size_t> live;
    for (std::size_t i = 0; i < nodes.size(); ++i)
      if (alive(i)) live.push_back(i);
    nodes[live[std::uniform_int_distribution<std::size_t>(0, live.size() - 1)(rng)]]->broadcast().broadcast(
        "probe", probe_payload(k));
  }

  // Broadcasts `count` probes from random live nodes, one every `gap`, then
  // lets them settle (delivery, and grafts for what was lost).
  broadcast_result probe(std::uint64_t first, std::size_t count, duration gap, random_engine& rng,
                         std::size_t origins = 0) {
    std::vector<std::size_t> live;
    for (std::size_t i = 0; i < nodes.size(); ++i)
      if (alive(i)) live.push_back(i);
    std::vector<std::size_t> senders = live;
    if (origins > 0 && origins < senders.size()) senders.resize(origins);
    const auto before = total(&plumtree_counters::gossip_sent);
    for (std::uint64_t k = first; k < first + count; ++k) {
      const auto origin = senders[std::uniform_int_distribution<std::size_t>(0, senders.size() - 1)(rng)];
      delivered[k].emplace(origin, 0);
      nodes[origin]->broadcast().broadcast("probe", probe_payload(k));
      net.run_for(gap);
    }
    net.run_for(3s);
    broadcast_result r;
    double deliveries_minus_one = 0;
    for (std::uint64_t k = first; k < first + count; ++k) {
      std::size_t got = 0;
      for (auto& [i, hops] : delivered[k]) {
        if (!alive(i)) continue;
        ++got;
        r.ldh = std::max(r.ldh, hops);
      }
      r.reliability += static_cast<double>(got) / static_cast<double>(live.size());
      r.complete += got == live.size() ? 1.0 : 0.0;
      deliveries_minus_one += got > 0 ? static_cast<double>(got - 1) : 0.0;
    }
    r.reliability /= static_cast<double>(count);
    r.complete /= static_cast<double>(count);
    const double msgs = static_cast<double>(total(&plumtree_counters::gossip_sent) - before);
    r.rmr = deliveries_minus_one > 0 ? msgs / deliveries_minus_one - 1.0 : 0.0;
    return r;
  }
};

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

// Runs until the overlay is connected and symmetric, checking every 100 ms
// of virtual time (the check walks the whole overlay, cheaply).
duration settle(cluster& c, duration limit) {
  const auto start = c.net.now();
  while (!c.overlay_connected() && c.net.now() - start < limit) c.net.run_for(100ms);
  return c.net.now() - start;
}

// Every node joins (one every 10 ms), then the overlay settles; returns the
// time it took to connect after the last join.
duration formed(cluster& c, const options& o) {
  c.form(o.seed);
  c.net.run_for(duration{10} * static_cast<duration::rep>(o.nodes));
  return settle(c, 600s);
}

int scenario_form(const options& o) {
  cluster c(o.nodes, o);
  const auto joined_by = duration{10} * static_cast<duration::rep>(o.nodes);
  const auto extra = formed(c, o);
  auto s = c.stats(true);
  json line = {{"scenario", "form"}, {"nodes", o.nodes}, {"seed", o.seed},
               {"connected_at_ms", (joined_by + extra).count()}, {"connected", s.connected()},
               {"asymmetric_edges", s.asymmetric}, {"active_min", s.min_active}, {"active_max", s.max_active},
               {"active_avg", s.avg_active}, {"passive_avg", s.avg_passive},
               {"clustering", s.clustering}, {"avg_shortest_path", s.avg_path},
               {"events", c.net.stats().events}};
  std::cout << line.dump() << '\n';
  std::cout << "\nform: " << o.nodes << " nodes, seed " << o.seed << "\n"
            << "  connected overlay at " << (joined_by + extra).count() << " ms virtual (joins end at "
            << joined_by.count() << " ms)\n"
            << "  active view min/avg/max " << s.min_active << "/" << fmt(s.avg_active) << "/" << s.max_active
            << ", passive avg " << fmt(s.avg_passive) << ", asymmetric edges " << s.asymmetric << "\n"
            << "  clustering coefficient " << fmt(s.clustering) << ", average shortest path " << fmt(s.avg_path)
            << "\n";
  if (!s.connected()) return 1;
  if (o.max_connect_ms && static_cast<std::uint64_t>(extra.count()) > *o.max_connect_ms) {
    std::cerr << "form: connected " << extra.count() << " ms after the last join, above " << *o.max_connect_ms << "\n";
    return 1;
  }
  return 0;
}

int scenario_fail(const options& o) {
  int rc = 0;
  std::cout << "\nfail: " << o.nodes << " nodes, seed " << o.seed
            << "; reliability / RMR / LDH of a broadcast right after the failure and after 1, 2, 5 membership rounds\n";
  std::printf("  %5s  %-26s %-26s %-26s %-26s\n", "fail%", "immediately", "after 1 round", "after 2 rounds",
              "after 5 rounds");
  for (int f : o.fail_percents) {
    cluster c(o.nodes, o);
    formed(c, o);
    c.net.run_for(30s);
    random_engine rng(o.seed * 31 + static_cast<std::uint64_t>(f));
    // A working cluster: the tree has settled under traffic before the
    // failure, and traffic goes on between the measured broadcasts.
    std::uint64_t background = 10'000'000;
    c.probe(background, 20, 100ms, rng);
    background += 20;
    std::vector<std::size_t> order(o.nodes);
    for (std::size_t i = 0; i < o.nodes; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    const auto kill = o.nodes * static_cast<std::size_t>(f) / 100;
    for (std::size_t i = 0; i < kill; ++i) c.net.kill(c.nodes[order[i]]->id());
    std::string row;
    double last_reliability = 0;
    std::uint64_t k = static_cast<std::uint64_t>(f) * 100;
    int rounds_done = 0;
    for (int rounds : {0, 1, 2, 5}) {
      const auto until = c.net.now() + c.nodes[0]->config().membership.shuffle_interval * (rounds - rounds_done);
      while (c.net.now() < until) c.send_unmeasured(background++, rng), c.net.run_for(500ms);
      rounds_done = rounds;
      auto r = c.probe(k++, 1, duration{0}, rng);
      json line = {{"scenario", "fail"}, {"nodes", o.nodes}, {"seed", o.seed}, {"fail_percent", f},
                   {"after_rounds", rounds}, {"reliability", r.reliability}, {"rmr", r.rmr}, {"ldh", r.ldh}};
      std::cout << line.dump() << '\n';
      row += fmt(r.reliability) + " / " + fmt(r.rmr) + " / " + std::to_string(r.ldh) + "       ";
      last_reliability = r.reliability;
    }
    std::printf("  %5d  %s\n", f, row.c_str());
    if (o.min_reliability && last_reliability < *o.min_reliability) {
      std::cerr << "fail: reliability " << fmt(last_reliability) << " after 5 rounds with " << f
                << " % failed, below " << fmt(*o.min_reliability) << "\n";
      rc = 1;
    }
  }
  return rc;
}

int scenario_steady(const options& o) {
  cluster c(o.nodes, o);
  formed(c, o);
  random_engine rng(o.seed);
  c.probe(0, 20, 100ms, rng);  // warm-up: the tree settles
  if (o.loss > 0) c.net.set_loss(o.loss);
  const auto payload0 = c.total(&plumtree_counters::gossip_sent);
  const auto ihave0 = c.total(&plumtree_counters::ihave_sent);
  const auto broadcast0 = c.net.stats().per_channel_sent[static_cast<std::size_t>(channel::broadcast)];
  const auto other0 = c.net.stats().messages_sent - broadcast0;
  // Why links change after warm-up (issue: a settled tree should not).
  using P = plumtree_counters;
  using H = hyparview_counters;
  const auto grafts0 = c.total(&P::graft_sent), prunes0 = c.total(&P::prune_sent);
  const auto late0 = c.total(&P::duplicates_after_graft), ups0 = c.total(&H::peers_up);
  const auto t0 = c.tree();
  if (o.trace_tree) {  // 10 chunks of 30 broadcasts before the measured run, tree shape after each
    for (int k = 0; k < 10; ++k) {
      auto g0 = c.total(&P::graft_sent), p0 = c.total(&P::prune_sent), u0 = c.total(&H::peers_up), d0 = c.total(&H::peers_down);
      auto pr0 = c.total(&H::promotions), rj0 = c.total(&H::neighbor_rejected), nr0 = c.total(&H::neighbor_requests), dc0 = c.total(&H::disconnects_sent), j0 = c.total(&H::joins_received), sw0 = c.total(&H::swaps), sh0 = c.total(&H::shuffles_sent), tl0 = c.total(&P::tree_links_lost);
      c.probe(5000 + k * 30, 30, duration{o.gap_ms}, rng, o.origins);
      auto t = c.tree();
      std::cerr << "chunk " << k << ": components " << t.components << " cycles " << t.cycles << " one-way " << t.one_way
                << " grafts " << c.total(&P::graft_sent) - g0 << " prunes " << c.total(&P::prune_sent) - p0
                << " ups " << c.total(&H::peers_up) - u0 << " downs " << c.total(&H::peers_down) - d0
                << " promotions " << c.total(&H::promotions) - pr0 << " neighbor req " << c.total(&H::neighbor_requests) - nr0
                << " opt " << c.total(&P::optimizations) << " tree-lost " << c.total(&P::tree_links_lost) - tl0
                << " rejected " << c.total(&H::neighbor_rejected) - rj0 << " disconnects " << c.total(&H::disconnects_sent) - dc0
                << " joins " << c.total(&H::joins_received) - j0 << " swaps " << c.total(&H::swaps) - sw0 << " shuffles " << c.total(&H::shuffles_sent) - sh0 << "\n";
    }
  }
  auto r = c.probe(1000, o.broadcasts, duration{o.gap_ms}, rng, o.origins);
  const auto t1 = c.tree();
  std::cerr << "tree before: directed " << t0.directed << " mutual " << t0.mutual << " one-way " << t0.one_way
            << " components " << t0.components << " cycles " << t0.cycles << "\n";
  std::cerr << "tree after:  directed " << t1.directed << " mutual " << t1.mutual << " one-way " << t1.one_way
            << " components " << t1.components << " cycles " << t1.cycles << "\n";
  const double grafts = static_cast<double>(c.total(&P::graft_sent) - grafts0);
  const double prunes = static_cast<double>(c.total(&P::prune_sent) - prunes0);
  const double late = static_cast<double>(c.total(&P::duplicates_after_graft) - late0);
  const double ups = static_cast<double>(c.total(&H::peers_up) - ups0);
  const auto n = static_cast<double>(o.broadcasts);
  const double payload = static_cast<double>(c.total(&plumtree_counters::gossip_sent) - payload0) / n;
  const double ihave = static_cast<double>(c.total(&plumtree_counters::ihave_sent) - ihave0) / n;
  const auto broadcast_msgs = c.net.stats().per_channel_sent[static_cast<std::size_t>(channel::broadcast)] - broadcast0;
  const double graft_prune = static_cast<double>(broadcast_msgs) / n - payload - ihave;
  const double other = static_cast<double>(c.net.stats().messages_sent - broadcast_msgs - broadcast0 - other0) / n;
  json line = {{"scenario", "steady"}, {"nodes", o.nodes}, {"seed", o.seed}, {"broadcasts", o.broadcasts},
               {"reliability_avg", r.reliability}, {"complete", r.complete}, {"rmr", r.rmr}, {"ldh_max", r.ldh},
               {"loss", o.loss},
               {"payload_msgs_per_broadcast", payload}, {"ihave_msgs_per_broadcast", ihave},
               {"graft_prune_msgs_per_broadcast", graft_prune}, {"membership_replica_msgs_per_broadcast", other},
               {"grafts_per_broadcast", grafts / n}, {"prunes_per_broadcast", prunes / n},
               {"prunes_after_graft_per_broadcast", late / n}, {"links_up", ups}, {"origins", o.origins}};
  std::cout << line.dump() << '\n';
  std::cout << "\nsteady: " << o.nodes << " nodes, " << o.broadcasts << " broadcasts (one every 50 ms), seed "
            << o.seed << "\n"
            << "  reliability " << fmt(r.reliability) << " (" << fmt(r.complete * 100) << " % of broadcasts reached every node), RMR " << fmt(r.rmr) << ", LDH " << r.ldh << "\n"
            << "  per broadcast: payload " << fmt(payload) << ", IHAVE " << fmt(ihave) << ", GRAFT+PRUNE "
            << fmt(graft_prune) << ", membership/replica traffic meanwhile " << fmt(other) << "\n"
            << "  per broadcast: " << fmt(grafts / n) << " grafts, " << fmt(prunes / n) << " prunes (of which "
            << fmt(late / n) << " duplicates of a grafted message); " << ups << " links up meanwhile\n";
  int rc = 0;
  auto over = [&](const char* what, double value, std::optional<double> bound, bool below = false) {
    if (!bound || (below ? value >= *bound : value <= *bound)) return;
    std::cerr << "steady: " << what << " " << fmt(value) << (below ? " below " : " above ") << fmt(*bound) << "\n";
    rc = 1;
  };
  over("RMR", r.rmr, o.max_rmr);
  over("GRAFT+PRUNE per broadcast", graft_prune, o.max_graft_prune);
  over("LDH", static_cast<double>(r.ldh), o.max_ldh ? std::optional<double>(static_cast<double>(*o.max_ldh)) : std::nullopt);
  over("share of complete broadcasts", r.complete, o.min_complete, true);
  return rc;
}

// Continuous churn while broadcasting: every 1/rate s one live node crashes
// and one fresh node joins through a random live node; a probe goes out
// every 100 ms from a random live node. Delivery ratio of a probe: among the
// nodes up when it was sent and still up at the end, the share that got it.
int scenario_churn(const options& o) {
  const auto joins = static_cast<std::size_t>(o.churn_per_s * static_cast<double>(o.churn_seconds)) + 1;
  cluster c(o.nodes + joins, o);
  c.form(o.seed, o.nodes);
  c.net.run_for(duration{10} * static_cast<duration::rep>(o.nodes));
  std::vector<bool> up(c.nodes.size(), false);
  for (std::size_t i = 0; i < o.nodes; ++i) up[i] = true;
  c.net.run_for(30s);  // settle before the churn starts
  random_engine rng(o.seed * 7 + 3);
  auto random_up = [&] {
    std::vector<std::size_t> live;
    for (std::size_t i = 0; i < up.size(); ++i)
      if (up[i]) live.push_back(i);
    return live[std::uniform_int_distribution<std::size_t>(0, live.size() - 1)(rng)];
  };
  auto count_membership = [&] {
    std::uint64_t m = 0;
    for (auto& nd : c.nodes) {
      const auto& k = nd->membership().counters();
      m += k.joins_received + k.forward_joins + k.neighbor_requests + k.shuffles_sent + k.disconnects_sent;
    }
    return m;
  };
  std::uint64_t grafts0 = 0, promotions0 = 0;
  for (auto& nd : c.nodes) grafts0 += nd->broadcast().counters().graft_sent, promotions0 += nd->membership().counters().promotions;
  const auto membership0 = count_membership();
  std::map<std::uint64_t, std::vector<std::size_t>> up_at_send;
  const auto churn_every = duration{static_cast<duration::rep>(1000.0 / o.churn_per_s)};
  std::size_t next_join = o.nodes, crashes = 0;
  duration next_churn = c.net.now() + churn_every;
  const auto end = c.net.now() + std::chrono::seconds(o.churn_seconds);
  std::uint64_t k = 0;
  while (c.net.now() < end) {
    if (c.net.now() >= next_churn && next_join < c.nodes.size()) {
      const auto victim = random_up();
      c.net.kill(c.nodes[victim]->id());
      up[victim] = false;
      ++crashes;
      const auto joiner = next_join++;
      const auto contact = random_up();
      up[joiner] = true;
      boost::asio::co_spawn(c.io, [&c, joiner, contact]() -> task<> {
        co_await c.nodes[joiner]->start();
        co_await c.nodes[joiner]->membership().join(peer_address{"sim", static_cast<std::uint16_t>(contact)});
      }, boost::asio::detached);
      next_churn += churn_every;
    }
    const auto origin = random_up();
    auto& live = up_at_send[k];
    for (std::size_t i = 0; i < up.size(); ++i)
      if (up[i] && i != origin) live.push_back(i);
    c.delivered[k].emplace(origin, 0);
    c.nodes[origin]->broadcast().broadcast("probe", probe_payload(k));
    ++k;
    c.net.run_for(100ms);
  }
  c.net.run_for(5s);
  double sum = 0, worst = 1;
  for (auto& [id, live] : up_at_send) {
    std::size_t eligible = 0, got = 0;
    for (auto i : live) {
      if (!up[i]) continue;
      ++eligible;
      got += c.delivered[id].contains(i);
    }
    const double ratio = eligible ? static_cast<double>(got) / static_cast<double>(eligible) : 1.0;
    sum += ratio;
    worst = std::min(worst, ratio);
  }
  const double avg = sum / static_cast<double>(up_at_send.size());
  std::uint64_t grafts = 0, promotions = 0;
  for (auto& nd : c.nodes) grafts += nd->broadcast().counters().graft_sent, promotions += nd->membership().counters().promotions;
  const double secs = static_cast<double>(o.churn_seconds);
  const double membership_per_s = static_cast<double>(count_membership() - membership0) / secs;
  json line = {{"scenario", "churn"}, {"nodes", o.nodes}, {"seed", o.seed}, {"churn_per_s", o.churn_per_s},
               {"seconds", o.churn_seconds}, {"crashes", crashes}, {"joins", crashes}, {"probes", k},
               {"delivery_ratio_avg", avg}, {"delivery_ratio_min", worst},
               {"grafts", grafts - grafts0}, {"promotions", promotions - promotions0},
               {"membership_msgs_per_s", membership_per_s}};
  std::cout << line.dump() << '\n';
  std::cout << "\nchurn: " << o.nodes << " nodes, " << o.churn_per_s << " crashes + " << o.churn_per_s
            << " joins per second for " << o.churn_seconds << " s (" << crashes << " of each), a probe every 100 ms\n"
            << "  delivery ratio avg " << fmt(avg) << ", worst probe " << fmt(worst) << "\n"
            << "  repair: " << (grafts - grafts0) << " grafts, " << (promotions - promotions0)
            << " passive promotions, " << fmt(membership_per_s) << " membership messages/s cluster-wide\n";
  return avg > 0.99 ? 0 : 1;
}

int scenario_partition(const options& o) {
  cluster c(o.nodes, o);
  formed(c, o);
  std::vector<std::shared_ptr<map>> maps;
  for (auto& n : c.nodes) maps.push_back(map::open(*n, "state"));
  std::set<std::string> left, right;
  for (std::size_t i = 0; i < o.nodes; ++i) (i < o.nodes / 2 ? left : right).insert(c.nodes[i]->id());
  c.net.partition(left, right);
  c.net.run_for(10s);
  boost::asio::co_spawn(c.io, [&]() -> task<> {
    for (int k = 0; k < 50; ++k) {
      co_await maps[0]->put("left-" + std::to_string(k), k);
      co_await maps[o.nodes - 1]->put("right-" + std::to_string(k), k);
    }
  }, boost::asio::detached);
  c.net.run_for(10s);
  const auto bytes0 = c.net.stats().bytes_sent;
  const auto healed_at = c.net.now();
  c.net.heal();
  auto all_equal = [&] {
    for (auto& m : maps)
      if (m->size() != 100) return false;
    return true;
  };
  while (!all_equal() && c.net.now() - healed_at < 3600s) c.net.run_for(100ms);
  const bool equal = all_equal();
  const auto took = c.net.now() - healed_at;
  json line = {{"scenario", "partition"}, {"nodes", o.nodes}, {"seed", o.seed}, {"converged", equal},
               {"converge_ms", took.count()}, {"bytes_after_heal", c.net.stats().bytes_sent - bytes0}};
  std::cout << line.dump() << '\n';
  std::cout << "\npartition: " << o.nodes << " nodes split in halves, 50 writes per side, then heal\n"
            << "  every replica equal " << (equal ? "after " : "NOT within ") << took.count()
            << " ms virtual; " << (c.net.stats().bytes_sent - bytes0) << " bytes sent meanwhile\n";
  if (!equal) return 1;
  if (o.max_converge_ms && static_cast<std::uint64_t>(took.count()) > *o.max_converge_ms) {
    std::cerr << "partition: converged " << took.count() << " ms after the heal, above " << *o.max_converge_ms << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Before anything hashes: runs replay only with the same hash-table order.
  if (!fix_process_hash_key(siphash_key{0x0706050403020100, 0x0f0e0d0c0b0a0908}))
    std::cerr << "barrel-p2p-sim: the hash key was drawn already: runs will not replay exactly\n";
  options o;
  cli::flag_reader args(argc, argv);
  auto value = [&] { return args.value(); };
  try {
    while (args.next()) {
      const auto& a = args.flag();
      if (a == "--scenario") o.scenario = value();
      else if (a == "--nodes") o.nodes = std::stoul(value()), o.nodes_given = true;
      else if (a == "--seeds") {
        const auto range = value();
        const auto dots = range.find("..");
        o.nemesis.first_seed = std::stoull(range.substr(0, dots));
        o.nemesis.last_seed = dots == std::string::npos ? o.nemesis.first_seed : std::stoull(range.substr(dots + 2));
        if (o.nemesis.last_seed < o.nemesis.first_seed) throw std::invalid_argument("--seeds A..B needs A <= B");
      } else if (a == "--trace") o.nemesis.trace = true;
      else if (a == "--sabotage") o.nemesis.sabotage = true;
      else if (a == "--shrink") o.nemesis.shrink = true;
      else if (a == "--skip-faults")
        for (auto k : cli::parse_list<std::size_t>(value())) o.nemesis.skip_faults.insert(k);
      else if (a == "--fault-seconds") o.nemesis.faulty = std::chrono::seconds(std::stoull(value()));
      else if (a == "--seed") o.seed = std::stoull(value());
      else if (a == "--broadcasts") o.broadcasts = std::stoul(value());
      else if (a == "--fail") o.fail_percents = cli::parse_list<int>(value());
      else if (a == "--churn-per-s") o.churn_per_s = std::stod(value());
      else if (a == "--churn-seconds") o.churn_seconds = std::stoul(value());
      else if (a == "--random-promotion") o.random_promotion = std::stod(value());
      else if (a == "--graft-timeout-ms") o.graft_timeout_ms = std::stoull(value());
      else if (a == "--origins") o.origins = std::stoul(value());
      else if (a == "--loss") o.loss = std::stod(value());
      else if (a == "--trace-tree") o.trace_tree = true;
      else if (a == "--max-rmr") o.max_rmr = std::stod(value());
      else if (a == "--max-graft-prune") o.max_graft_prune = std::stod(value());
      else if (a == "--max-ldh") o.max_ldh = std::stoull(value());
      else if (a == "--min-complete") o.min_complete = std::stod(value());
      else if (a == "--max-connect-ms") o.max_connect_ms = std::stoull(value());
      else if (a == "--min-reliability") o.min_reliability = std::stod(value());
      else if (a == "--max-converge-ms") o.max_converge_ms = std::stoull(value());
      else if (a == "--gap-ms") o.gap_ms = std::stoull(value());
      else if (a == "--jitter-ms") o.jitter_ms = std::stoull(value());
      else if (a == "--graft-jitter") o.graft_jitter = std::stod(value());
      else if (a == "--prune-after") o.prune_after = static_cast<std::uint32_t>(std::stoul(value()));
      else if (a == "--optimization-threshold") o.optimization_threshold = std::stoull(value());
      else if (a == "--optimization-interval-ms") o.optimization_interval_ms = std::stoull(value());
      else if (a == "--lazy-new-links") o.lazy_new_links = value() == "1";
      else if (a == "--flood-after-graft") o.flood_after_graft = value() == "1";
      else if (a == "--repair-graft-ms") o.repair_graft_ms = std::stoull(value());
      else {
        std::cerr << "usage: barrel-p2p-sim --scenario form|fail|steady|churn|partition [--nodes N] [--seed S]"
                     " [--broadcasts K] [--fail 10,20,...] [--churn-per-s R] [--churn-seconds S]\n"
                     "                      [--random-promotion P] [--graft-timeout-ms T] [--graft-jitter F]\n"
                     "                      [--prune-after N] [--lazy-new-links 0|1] [--repair-graft-ms T]\n"
                     "                      [--flood-after-graft 0|1] [--optimization-threshold H]\n"
                     "                      [--optimization-interval-ms T] [--origins K] [--gap-ms T]\n"
                     "                      [--jitter-ms J] [--loss P] [--trace-tree]\n"
                     "                      [--max-rmr R] [--max-ldh L] [--max-graft-prune G] [--min-complete C]\n"
                     "                      [--max-connect-ms T] [--min-reliability R] [--max-converge-ms T]\n"
                     "       barrel-p2p-sim --scenario nemesis [--seeds A..B] [--nodes N] [--fault-seconds S] [--trace] [--sabotage]\n"
                     "                      [--skip-faults K,...] [--shrink]\n";
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "barrel-p2p-sim: " << e.what() << '\n';
    return 2;
  }
  if (!(o.churn_per_s > 0 && o.churn_per_s <= 1000) || o.churn_seconds == 0) {
    std::cerr << "barrel-p2p-sim: --churn-per-s must be in (0, 1000], --churn-seconds positive\n";
    return 2;
  }
  if (o.nodes < 2 || o.nodes > 60000) {
    std::cerr << "barrel-p2p-sim: --nodes must be 2..60000\n";
    return 2;
  }
  const auto wall0 = std::chrono::steady_clock::now();
  int rc = 2;
  if (o.scenario == "form") rc = scenario_form(o);
  else if (o.scenario == "fail") rc = scenario_fail(o);
  else if (o.scenario == "steady") rc = scenario_steady(o);
  else if (o.scenario == "churn") rc = scenario_churn(o);
  else if (o.scenario == "partition") rc = scenario_partition(o);
  else if (o.scenario == "nemesis") {
    auto n = o.nemesis;
    if (o.nodes_given) n.nodes = o.nodes;
    rc = sim::run_nemesis(n);
  }
  else std::cerr << "barrel-p2p-sim: unknown scenario " << o.scenario << '\n';
  const auto wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  std::cerr << "wall time " << fmt(wall) << " s\n";
  return rc;
}
