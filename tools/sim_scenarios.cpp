// The scenarios of barrel-p2p-sim other than nemesis: form, fail, steady,
// churn, partition. Each prints JSON lines and a summary; the exit status
// is 1 when a figure is past a bound the command line set.
#include "sim_scenarios.hpp"

#include "sim_cluster.hpp"

#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/map.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

namespace barrel_p2p::sim {

int scenario_form(const options& o) {
  cluster c(o.nodes, o);
  formed(c, o);
  const auto connected_at = c.net.now();
  // Each join waits for its JOIN's round trip before the next 10 ms pause,
  // so the last one ends near 20 ms x N, not 10 ms x N.
  const auto joins_end = c.joins_ended.value_or(connected_at);
  const auto extra = connected_at - joins_end;
  auto s = c.stats(true);
  json line = {{"scenario", "form"}, {"nodes", o.nodes}, {"seed", o.seed},
               {"connected_at_ms", connected_at.count()}, {"joins_end_ms", joins_end.count()},
               {"connected", s.connected()},
               {"asymmetric_edges", s.asymmetric}, {"active_min", s.min_active}, {"active_max", s.max_active},
               {"active_avg", s.avg_active}, {"passive_avg", s.avg_passive},
               {"clustering", s.clustering}, {"avg_shortest_path", s.avg_path},
               {"avg_eccentricity", s.avg_eccentricity},
               {"events", c.net.stats().events}, {"messages", c.net.stats().messages_delivered}};
  std::cout << line.dump() << '\n';
  std::cout << "\nform: " << o.nodes << " nodes, seed " << o.seed << "\n"
            << "  connected overlay at " << connected_at.count() << " ms virtual (the last join ended at "
            << joins_end.count() << " ms)\n"
            << "  active view min/avg/max " << s.min_active << "/" << fmt(s.avg_active) << "/" << s.max_active
            << ", passive avg " << fmt(s.avg_passive) << ", asymmetric edges " << s.asymmetric << "\n"
            << "  clustering coefficient " << fmt(s.clustering) << ", average shortest path " << fmt(s.avg_path)
            << ", average eccentricity " << fmt(s.avg_eccentricity) << "\n";
  if (!s.connected()) return 1;
  if (o.max_connect_ms && static_cast<std::uint64_t>(extra.count()) > *o.max_connect_ms) {
    std::cerr << "form: connected " << extra.count() << " ms after the last join, above " << *o.max_connect_ms << "\n";
    return 1;
  }
  return 0;
}

namespace {

// With --regions: the delivery latency of the measured broadcasts by the
// receiver's region (a JSON line each, then a table).
void print_region_latencies(cluster& c, const options& o, const char* scenario) {
  if (o.regions == 0) return;
  auto rows = c.take_region_latencies();
  for (const auto& r : rows) {
    json line = {{"scenario", scenario}, {"region", r.name}, {"nodes_assigned", r.assigned}, {"deliveries", r.deliveries},
                 {"latency_p50_ms", r.p50}, {"latency_p90_ms", r.p90}, {"latency_p99_ms", r.p99},
                 {"latency_max_ms", r.max}};
    std::cout << line.dump() << '\n';
  }
  std::cout << "  delivery latency by region (broadcast sent -> delivered), ms:\n";
  std::printf("    %-16s %8s %10s %6s %6s %6s %6s\n", "region", "assigned", "deliveries", "p50", "p90", "p99", "max");
  for (const auto& r : rows)
    std::printf("    %-16s %8zu %10zu %6u %6u %6u %6u\n", r.name.c_str(), r.assigned, r.deliveries, r.p50, r.p90, r.p99,
                r.max);
  std::fflush(stdout);
}

// One failure size on a formed cluster: the JSON lines and the table row go
// to `out`; the return value is the exit status.
int fail_one(cluster& c, const options& o, int f, std::ostream& out) {
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
  for (std::size_t i = 0; i < kill; ++i) c.kill(order[i]);
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
    out << line.dump() << '\n';
    row += fmt(r.reliability) + " / " + fmt(r.rmr) + " / " + std::to_string(r.ldh) + "       ";
    last_reliability = r.reliability;
  }
  char head[16];
  std::snprintf(head, sizeof head, "  %5d  ", f);
  out << "@row " << head << row << '\n';
  if (o.min_reliability && last_reliability < *o.min_reliability) {
    std::cerr << "fail: reliability " << fmt(last_reliability) << " after 5 rounds with " << f
              << " % failed, below " << fmt(*o.min_reliability) << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

// Every failure size starts from the same formed cluster: formed once, then
// copied by fork() for each size (--jobs at a time), which is what forming
// it again with the same seed gave, without paying for it ten times. The
// children write to files read back in order, so the output does not
// depend on --jobs.
int scenario_fail(const options& o) {
  std::cout << "\nfail: " << o.nodes << " nodes, seed " << o.seed
            << "; reliability / RMR / LDH of a broadcast right after the failure and after 1, 2, 5 membership rounds\n";
  std::printf("  %5s  %-26s %-26s %-26s %-26s\n", "fail%", "immediately", "after 1 round", "after 2 rounds",
              "after 5 rounds");
  std::fflush(stdout);
  std::cout.flush();
  cluster c(o.nodes, o);
  formed(c, o);
  c.net.run_for(30s);
  const auto dir = std::filesystem::temp_directory_path() / ("barrel-p2p-sim-fail-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto file_of = [&](std::size_t i) { return dir / std::to_string(i); };
  std::vector<int> status(o.fail_percents.size(), 1);
  std::map<pid_t, std::size_t> running;
  const auto reap_one = [&] {
    int st = 0;
    const pid_t pid = ::wait(&st);
    if (pid <= 0) return;
    auto it = running.find(pid);
    if (it == running.end()) return;
    status[it->second] = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    running.erase(it);
  };
  for (std::size_t i = 0; i < o.fail_percents.size(); ++i) {
    while (running.size() >= std::max<std::size_t>(1, o.jobs)) reap_one();
    c.io.notify_fork(boost::asio::execution_context::fork_prepare);
    const pid_t pid = ::fork();
    if (pid == 0) {
      c.io.notify_fork(boost::asio::execution_context::fork_child);
      std::ofstream out(file_of(i));
      const int rc = fail_one(c, o, o.fail_percents[i], out);
      out.close();
      std::cerr.flush();
      ::_exit(out ? rc : 1);  // no destructors: the parent owns the cluster
    }
    c.io.notify_fork(boost::asio::execution_context::fork_parent);
    if (pid < 0) {
      std::cerr << "fail: fork failed\n";
      break;
    }
    running.emplace(pid, i);
  }
  while (!running.empty()) reap_one();
  int rc = 0;
  for (std::size_t i = 0; i < o.fail_percents.size(); ++i) {
    std::ifstream in(file_of(i));
    std::string line, row;
    while (std::getline(in, line)) {
      if (line.rfind("@row ", 0) == 0) row = line.substr(5);
      else std::cout << line << '\n';
    }
    std::cout << row << '\n';
    if (status[i] != 0 || row.empty()) rc = 1;
  }
  std::filesystem::remove_all(dir);
  return rc;
}

int scenario_steady(const options& o) {
  cluster c(o.nodes, o);
  formed(c, o);
  random_engine rng(o.seed);
  c.probe(0, 20, 100ms, rng);  // warm-up: the tree settles
  if (o.loss > 0) c.net.set_loss(o.loss);
  c.start_network_faults(o);
  const auto payload0 = c.total(&plumtree_counters::gossip_sent);
  const auto ihave0 = c.total(&plumtree_counters::ihave_sent);
  const auto broadcast0 = c.net.stats().per_channel_sent[static_cast<std::size_t>(channel::broadcast)];
  const auto other0 = c.net.stats().messages_sent - broadcast0;
  // Why links change after warm-up (issue: a settled tree should not).
  using P = plumtree_counters;
  using H = hyparview_counters;
  const auto grafts0 = c.total(&P::graft_sent), prunes0 = c.total(&P::prune_sent);
  const auto origin_prunes0 = c.total(&P::origin_prunes_sent);
  const auto optimizations0 = c.total(&P::optimizations);
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
  c.take_region_latencies();  // the warm-up's are not measured
  auto r = c.probe(1000, o.broadcasts, duration{o.gap_ms}, rng, o.origins);
  const auto t1 = c.tree();
  const auto overlay = c.stats(true);
  const double centre_tree = c.centre_tree_eccentricity();
  const auto shared = c.shared_tree_bounds();
  std::cerr << "tree before: directed " << t0.directed << " mutual " << t0.mutual << " one-way " << t0.one_way
            << " components " << t0.components << " cycles " << t0.cycles << "\n";
  std::cerr << "tree after:  directed " << t1.directed << " mutual " << t1.mutual << " one-way " << t1.one_way
            << " components " << t1.components << " cycles " << t1.cycles << "\n";
  const double grafts = static_cast<double>(c.total(&P::graft_sent) - grafts0);
  const double prunes = static_cast<double>(c.total(&P::prune_sent) - prunes0);
  const double late = static_cast<double>(c.total(&P::duplicates_after_graft) - late0);
  const double origin_prunes = static_cast<double>(c.total(&P::origin_prunes_sent) - origin_prunes0);
  const double ups = static_cast<double>(c.total(&H::peers_up) - ups0);
  const double graft_wait = static_cast<double>(c.total(&P::graft_wait_ms)) / static_cast<double>(c.nodes.size());
  const auto n = static_cast<double>(o.broadcasts);
  const double payload = static_cast<double>(c.total(&plumtree_counters::gossip_sent) - payload0) / n;
  const double ihave = static_cast<double>(c.total(&plumtree_counters::ihave_sent) - ihave0) / n;
  const auto broadcast_msgs = c.net.stats().per_channel_sent[static_cast<std::size_t>(channel::broadcast)] - broadcast0;
  const double graft_prune = static_cast<double>(broadcast_msgs) / n - payload - ihave;
  const double other = static_cast<double>(c.net.stats().messages_sent - broadcast_msgs - broadcast0 - other0) / n;
  json line = {{"scenario", "steady"}, {"nodes", o.nodes}, {"seed", o.seed}, {"broadcasts", o.broadcasts},
               {"reliability_avg", r.reliability}, {"complete", r.complete}, {"rmr", r.rmr}, {"ldh_max", r.ldh},
               {"ldh_mean", r.ldh_mean}, {"avg_shortest_path", overlay.avg_path},
               {"avg_eccentricity", overlay.avg_eccentricity}, {"tree_avg_eccentricity", t1.avg_eccentricity},
               {"centre_tree_avg_eccentricity", centre_tree},
               {"shared_tree_floor", shared.floor}, {"best_bfs_tree_avg_eccentricity", shared.best_bfs_tree},
               {"overlay_radius", shared.radius},
               {"loss", o.loss},
               {"payload_msgs_per_broadcast", payload}, {"ihave_msgs_per_broadcast", ihave},
               {"graft_prune_msgs_per_broadcast", graft_prune}, {"membership_replica_msgs_per_broadcast", other},
               {"grafts_per_broadcast", grafts / n}, {"prunes_per_broadcast", prunes / n},
               {"origin_prunes_per_broadcast", origin_prunes / n},
               {"optimizations_per_broadcast", static_cast<double>(c.total(&P::optimizations) - optimizations0) / n},
               {"prunes_after_graft_per_broadcast", late / n}, {"links_up", ups}, {"origins", o.origins},
               {"graft_wait_ms_avg", graft_wait}};
  std::cout << line.dump() << '\n';
  std::cout << "\nsteady: " << o.nodes << " nodes, " << o.broadcasts << " broadcasts (one every " << o.gap_ms << " ms), seed "
            << o.seed << "\n"
            << "  reliability " << fmt(r.reliability) << " (" << fmt(r.complete * 100) << " % of broadcasts reached every node), RMR " << fmt(r.rmr) << ", LDH " << r.ldh << " (greatest), "
            << fmt(r.ldh_mean) << " (a broadcast's, averaged)\n"
            << "  overlay: average shortest path " << fmt(overlay.avg_path) << ", average eccentricity "
            << fmt(overlay.avg_eccentricity) << "; eager links at the end: average eccentricity " << fmt(t1.avg_eccentricity)
            << ", of a breadth-first tree from the overlay's centre " << fmt(centre_tree) << "\n"
            << "  one tree shared by every origin: average eccentricity at least " << fmt(shared.floor)
            << " (radius " << shared.radius << " + the least mean distance to an edge), "
            << fmt(shared.best_bfs_tree) << " for the best breadth-first tree (from node " << shared.best_bfs_root
            << ")\n"
            << "  per broadcast: payload " << fmt(payload) << ", IHAVE " << fmt(ihave) << ", GRAFT+PRUNE "
            << fmt(graft_prune) << ", membership/replica traffic meanwhile " << fmt(other) << "\n"
            << "  per broadcast: " << fmt(grafts / n) << " grafts, " << fmt(prunes / n) << " prunes (of which "
            << fmt(late / n) << " duplicates of a grafted message), " << fmt(origin_prunes / n)
            << " prunes for one origin; " << ups << " links up meanwhile; graft wait " << fmt(graft_wait)
            << " ms (node average)\n";
  int rc = 0;
  auto over = [&](const char* what, double value, std::optional<double> bound, bool below = false) {
    if (!bound || (below ? value >= *bound : value <= *bound)) return;
    std::cerr << "steady: " << what << " " << fmt(value) << (below ? " below " : " above ") << fmt(*bound) << "\n";
    rc = 1;
  };
  print_region_latencies(c, o, "steady");
  over("RMR", r.rmr, o.max_rmr);
  over("GRAFT+PRUNE per broadcast", graft_prune, o.max_graft_prune);
  over("LDH", static_cast<double>(r.ldh), o.max_ldh ? std::optional<double>(static_cast<double>(*o.max_ldh)) : std::nullopt);
  over("mean LDH", r.ldh_mean, o.max_ldh_mean);
  over("share of complete broadcasts", r.complete, o.min_complete, true);
  // A floor above a tree that exists is a wrong proof or a wrong search.
  over("shared-tree floor", shared.floor, shared.best_bfs_tree + 1e-9);
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
  settle(c, formation_limit(o.nodes));  // a connected overlay first (at 10,000 nodes, long after the last join)
  c.net.run_for(30s);  // and a quiet spell before the churn starts
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
  c.start_network_faults(o);
  std::map<std::uint64_t, std::vector<std::size_t>> up_at_send;
  const auto churn_every = duration{static_cast<duration::rep>(1000.0 / o.churn_per_s)};
  std::size_t next_join = o.nodes, crashes = 0;
  duration next_churn = c.net.now() + churn_every;
  const auto end = c.net.now() + std::chrono::seconds(o.churn_seconds);
  std::uint64_t k = 0;
  while (c.net.now() < end) {
    if (c.net.now() >= next_churn && next_join < c.nodes.size()) {
      const auto victim = random_up();
      c.kill(victim);
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
    c.send_probe(k, origin);
    ++k;
    c.net.run_for(100ms);
  }
  c.net.run_for(std::max<duration>(5s, c.settle_time));
  double sum = 0, worst = 1;
  std::vector<double> per_second(o.churn_seconds, 0.0);  // 10 probes a second
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
    per_second[std::min<std::size_t>(id / 10, o.churn_seconds - 1)] += ratio / 10;
  }
  std::cerr << "churn: delivery ratio by second:";
  for (auto r : per_second) std::cerr << ' ' << fmt(r);
  std::cerr << '\n';
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
  print_region_latencies(c, o, "churn");
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

}  // namespace barrel_p2p::sim
