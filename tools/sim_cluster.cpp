// The measured cluster of barrel-p2p-sim (see sim_cluster.hpp).
#include "sim_cluster.hpp"
#include "sim_trees.hpp"

#include <barrel_p2p/cbor.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <queue>
#include <stdexcept>
#include <set>

namespace barrel_p2p::sim {

shared_bytes probe_payload(std::uint64_t k) { return share_bytes(cbor_writer().uint(k).take()); }

sim_regions measured_regions(std::size_t k) {
  if (k < 1 || k > 5) throw std::invalid_argument("--regions must be 1..5");
  // Median (P50) round-trip times between Azure regions, ms: Microsoft's
  // "Azure network round-trip latency statistics", June 2025 dataset, the
  // two directions averaged. Within a region: 2 ms, an assumption (the page
  // gives none). The order spreads the first k over continents.
  sim_regions all;
  all.names = {"east-us", "west-europe", "japan-east", "brazil-south", "australia-east"};
  const int rtt[5][5] = {{2, 85, 164, 118, 201},
                         {85, 2, 236, 188, 251},
                         {164, 236, 2, 271, 104},
                         {118, 188, 271, 2, 305},
                         {201, 251, 104, 305, 2}};
  sim_regions r;
  for (std::size_t i = 0; i < k; ++i) {
    r.names.push_back(all.names[i]);
    r.rtt.emplace_back();
    for (std::size_t j = 0; j < k; ++j) r.rtt.back().push_back(duration{rtt[i][j]});
  }
  return r;
}

sim_regions network_regions(const options& o, double loss_between) {
  auto r = measured_regions(o.regions);
  r.jitter_share = o.region_jitter.value_or(0.1);
  r.loss_between = loss_between;
  return r;
}

std::vector<cluster::region_latency> cluster::take_region_latencies() {
  std::vector<region_latency> out;
  for (std::size_t r = 0; r < latency_ms.size(); ++r) {
    auto& v = latency_ms[r];
    region_latency l;
    l.name = region_names[r];
    for (std::size_t i = 0; i < nodes.size(); ++i) l.assigned += region_of(i) == r;
    l.deliveries = v.size();
    if (!v.empty()) {
      std::sort(v.begin(), v.end());
      // The smallest sample with at least a share q of them at or below it.
      auto at = [&](double q) {
        const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
        return v[std::min(v.size(), std::max<std::size_t>(rank, 1)) - 1];
      };
      l.p50 = at(0.5), l.p90 = at(0.9), l.p99 = at(0.99), l.max = v.back();
    }
    v.clear();
    out.push_back(l);
  }
  sent_at.clear();
  return out;
}

void cluster::start_network_faults(const options& o) {
  if (o.cross_region_loss > 0 && o.regions > 0) net.set_regions(network_regions(o, o.cross_region_loss));
  if (o.flaps_per_s > 0) net.set_flapping(o.flaps_per_s, duration{static_cast<duration::rep>(o.flap_ms)});
}

cluster::cluster(std::size_t n, const options& o) : net(io, [&] {
  sim_config c;
  c.seed = o.seed;
  c.latency = link_latency;
  c.jitter = duration{o.jitter_ms};  // 0 by default: exact hop counts from delivery times
  return c;
}()) {
  active.resize(n);
  if (o.regions > 0) {
    auto r = network_regions(o);
    region_names = r.names;
    latency_ms.resize(r.names.size());
    net.set_regions(std::move(r));
    settle_time = 30s;  // a deep tree of cross-region hops takes seconds
  }
  for (std::size_t i = 0; i < n; ++i) {
    node_config c;
    const auto seed = o.seed;
    c.transport.node_id = "n" + std::to_string(i);
    if (o.random_promotion) c.membership.random_promotion = *o.random_promotion;
    if (o.graft_timeout_ms) c.broadcast.graft_timeout = duration{*o.graft_timeout_ms};
    if (o.graft_jitter) c.broadcast.graft_jitter = *o.graft_jitter;
    if (o.prune_after) c.broadcast.prune_after_duplicates = *o.prune_after;
    if (o.prune_span_lags) c.broadcast.prune_span_lags = *o.prune_span_lags;
    if (o.origin_copies_end_runs) c.broadcast.origin_copies_end_runs = *o.origin_copies_end_runs;
    if (o.prune_grace_ms) c.broadcast.prune_grace = duration{*o.prune_grace_ms};
    if (o.fetch_answers_join_tree) c.broadcast.fetch_answers_join_tree = *o.fetch_answers_join_tree;
    if (o.origin_prune_after) c.broadcast.origin_prune_after_duplicates = *o.origin_prune_after;
    if (o.origin_prune_span_lags) c.broadcast.origin_prune_span_lags = *o.origin_prune_span_lags;
    if (o.flood_after_graft) c.broadcast.flood_after_graft = *o.flood_after_graft;
    if (o.adaptive_graft) c.broadcast.adaptive_graft_timeout = *o.adaptive_graft;
    if (o.optimization_threshold) c.broadcast.optimization_threshold = *o.optimization_threshold;
    if (o.optimization_interval_ms) c.broadcast.optimization_interval = duration{*o.optimization_interval_ms};
    if (o.optimization_mean_hops) c.broadcast.optimization_mean_hops = *o.optimization_mean_hops;
    if (o.optimization_samples) c.broadcast.optimization_samples = *o.optimization_samples;
    if (o.lazy_new_links) c.broadcast.lazy_new_links = *o.lazy_new_links;
    if (o.repair_graft_ms) c.broadcast.repair_graft_timeout = duration{*o.repair_graft_ms};
    c.membership.seed = seed * 1'000'003 + i + 1;
    c.broadcast.seed = seed * 2'000'003 + i + 1;
    c.replicas.seed = seed * 3'000'017 + i + 1;
    c.clocks.seed = seed * 4'000'037 + i + 1;
    c.log = [](const std::string&) {};
    nodes.push_back(std::make_unique<node>(net, c));
    if (o.regions > 0) net.set_region(c.transport.node_id, region_of(i));
    auto* me = this;
    nodes.back()->membership().add_listener([me, i](const membership_event& ev) { me->on_membership(i, ev); });
    nodes.back()->broadcast().subscribe(
        "probe", [me, i](const plumtree::delivery& d) {
          auto k = cbor_reader(d.payload.bytes()).uint();
          if (!k) return;
          me->delivered[*k].emplace(i, d.hops);
          if (me->sent_at.empty()) return;
          if (auto at = me->sent_at.find(*k); at != me->sent_at.end())
            me->latency_ms[me->region_of(i)].push_back(static_cast<std::uint32_t>((me->net.now() - at->second).count()));
        });
  }
}

void cluster::form(std::uint64_t seed, std::size_t count) {
  members = std::min(count, nodes.size());
  // A member coroutine, not a lambda: GCC 12 warns wrongly
  // (mismatched-new-delete) on the lambda's frame here.
  boost::asio::co_spawn(io, join_in_turn(seed, members), boost::asio::detached);
}

task<> cluster::join_in_turn(std::uint64_t seed, std::size_t count) {
  random_engine rng(seed);
  for (std::size_t i = 0; i < count; ++i) {
    co_await nodes[i]->start();
    if (i == 0) continue;
    peer_address contact{"sim", static_cast<std::uint16_t>(std::uniform_int_distribution<std::size_t>(0, i - 1)(rng))};
    co_await nodes[i]->membership().join(contact);
    co_await nodes[i]->sched().sleep(10ms);
  }
  joins_ended = net.now();
}

// From the views mirrored by on_membership, which hold what active_view()
// holds (the statistics do not depend on the order).
std::vector<std::vector<std::size_t>> cluster::graph() const {
  std::vector<std::vector<std::size_t>> g(nodes.size());
  for (std::size_t i = 0; i < nodes.size(); ++i)
    if (alive(i)) g[i].assign(active[i].begin(), active[i].end());
  return g;
}

namespace {

// Node "n<k>" is node k.
std::uint32_t index_of(const peer_descriptor& d) {
  return static_cast<std::uint32_t>(std::strtoull(d.id.c_str() + 1, nullptr, 10));
}

bool holds(const std::vector<std::uint32_t>& v, std::uint32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

}  // namespace

void cluster::on_membership(std::size_t i, const membership_event& ev) {
  using kind = membership_event::kind;
  if (ev.what != kind::peer_up && ev.what != kind::peer_down) return;
  const auto me = static_cast<std::uint32_t>(i);
  const auto peer = index_of(ev.peer);
  if (peer >= active.size()) return;
  auto& mine = active[i];
  const bool back = holds(active[peer], me);  // the peer holds this node
  if (ev.what == kind::peer_up) {
    if (holds(mine, peer)) return;
    mine.push_back(peer);
    if (back) --asymmetric;
    else ++asymmetric;
  } else {
    auto it = std::find(mine.begin(), mine.end(), peer);
    if (it == mine.end()) return;
    mine.erase(it);
    if (back) ++asymmetric;
    else --asymmetric;
  }
}

void cluster::kill(std::size_t i) {
  net.kill(nodes[i]->id());
  ++killed;
}

bool cluster::overlay_connected() const {
  // Nearly every check during formation ends here, in constant time. With
  // dead nodes their views do not count, so the walk below decides.
  if (asymmetric > 0 && killed == 0) return false;
  // Nodes not started yet (churn's later joiners) are not in the overlay.
  const auto n = std::min(members, nodes.size());
  std::size_t live = 0, first = SIZE_MAX;
  for (std::size_t i = 0; i < n; ++i) {
    if (!alive(i)) continue;
    ++live;
    if (first == SIZE_MAX) first = i;
    if (active[i].empty()) return false;
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (!alive(i)) continue;
    for (auto j : active[i])
      if (j >= n || !alive(j) || !holds(active[j], static_cast<std::uint32_t>(i))) return false;
  }
  if (live == 0) return true;
  std::vector<char> seen(active.size(), 0);
  std::vector<std::size_t> todo{first};
  seen[first] = 1;
  std::size_t reached = 0;
  while (!todo.empty()) {
    const auto v = todo.back();
    todo.pop_back();
    ++reached;
    for (auto w : active[v])
      if (!seen[w]) seen[w] = 1, todo.push_back(w);
  }
  return reached == live;
}

std::vector<bool> cluster::live_mask() const {
  std::vector<bool> live(nodes.size());
  for (std::size_t i = 0; i < nodes.size(); ++i) live[i] = alive(i);
  return live;
}

// Breadth-first distances over `g` (live nodes only). With `sources` > 0:
// the average shortest path and the average eccentricity (greatest distance)
// from up to that many sources spread over the nodes, the first at `first`;
// `reached` counts the live nodes reachable from `first`.
cluster::path_stats cluster::distances(const std::vector<std::vector<std::size_t>>& g, std::size_t first,
                                       std::size_t* reached, std::size_t sources) const {
  path_stats r;
  if (first >= g.size()) return r;
  const auto live = live_mask();
  if (reached) {
    auto d0 = breadth_first(g, live, first, nullptr);
    *reached = 0;
    for (std::size_t i = 0; i < g.size(); ++i) *reached += live[i] && d0[i] >= 0;
  }
  double total = 0, eccentricity = 0;
  std::size_t pairs = 0, used = 0;
  for (std::size_t i = first; i < g.size() && used < sources; i += std::max<std::size_t>(1, g.size() / sources)) {
    if (!live[i]) continue;
    ++used;
    auto d = breadth_first(g, live, i, nullptr);
    int farthest = 0;
    for (std::size_t j = 0; j < g.size(); ++j)
      if (j != i && d[j] > 0) total += d[j], ++pairs, farthest = std::max(farthest, d[j]);
    eccentricity += farthest;
  }
  r.avg_path = pairs ? total / static_cast<double>(pairs) : 0;
  r.avg_eccentricity = used ? eccentricity / static_cast<double>(used) : 0;
  return r;
}

cluster::overlay_stats cluster::stats(bool paths) const {
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
  std::size_t reached = 0;
  distances(g, first, &reached);
  s.reached = reached;
  if (paths) {
    auto d = distances(g, first, nullptr, 50);
    s.avg_path = d.avg_path;
    s.avg_eccentricity = d.avg_eccentricity;
  }
  return s;
}

// The average eccentricity of a breadth-first tree grown from the
// overlay's centre (the node whose farthest node is nearest), over 50
// sampled sources: the first estimate of how shallow one shared tree gets,
// kept so that figures recorded with it can be run again
// (shared_tree_bounds gives a proven floor and the best such tree).
double cluster::centre_tree_eccentricity() const {
  const auto g = graph();
  const auto live = live_mask();
  std::size_t centre = SIZE_MAX;
  int best = INT_MAX;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (live[i]) {
      const auto d = breadth_first(g, live, i, nullptr);
      if (const int e = *std::max_element(d.begin(), d.end()); e < best) best = e, centre = i;
    }
  if (centre == SIZE_MAX) return 0;
  std::vector<std::size_t> parent(g.size(), SIZE_MAX);
  breadth_first(g, live, centre, &parent);
  std::vector<std::vector<std::size_t>> tree(g.size());
  for (std::size_t i = 0; i < g.size(); ++i)
    if (parent[i] != SIZE_MAX) tree[i].push_back(parent[i]), tree[parent[i]].push_back(i);
  // Sources spread over the nodes as for the other figures, not from the
  // centre on (it has the smallest eccentricity, and the spread would
  // start there).
  std::size_t first = 0;
  while (first < g.size() && !alive(first)) ++first;
  return distances(tree, first, nullptr, 50).avg_eccentricity;
}

shared_tree_depth cluster::shared_tree_bounds() const { return sim::shared_tree_bounds(graph(), live_mask()); }

cluster::tree_stats cluster::tree() const {
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
  // The eager graph taken as undirected: a one-way eager link carries
  // messages one way only, so this is a floor for the tree as it is.
  std::vector<std::vector<std::size_t>> links(nodes.size());
  for (std::size_t i = 0; i < nodes.size(); ++i)
    for (auto j : eager[i]) {
      links[i].push_back(j);
      if (!eager[j].contains(i)) links[j].push_back(i);
    }
  std::size_t first = 0;
  while (first < nodes.size() && !alive(first)) ++first;
  t.avg_eccentricity = distances(links, first, nullptr, 50).avg_eccentricity;
  return t;
}

void cluster::send_probe(std::uint64_t k, std::size_t origin) {
  delivered[k].emplace(origin, 0);
  if (!region_names.empty()) sent_at[k] = net.now();
  nodes[origin]->broadcast().broadcast("probe", probe_payload(k));
}

void cluster::send_unmeasured(std::uint64_t k, random_engine& rng) {
  std::vector<std::size_t> live;
  for (std::size_t i = 0; i < nodes.size(); ++i)
    if (alive(i)) live.push_back(i);
  nodes[live[std::uniform_int_distribution<std::size_t>(0, live.size() - 1)(rng)]]->broadcast().broadcast(
      "probe", probe_payload(k));
}

cluster::broadcast_result cluster::probe(std::uint64_t first, std::size_t count, duration gap, random_engine& rng, std::size_t origins) {
  std::vector<std::size_t> live;
  for (std::size_t i = 0; i < nodes.size(); ++i)
    if (alive(i)) live.push_back(i);
  std::vector<std::size_t> senders = live;
  if (origins > 0 && origins < senders.size()) senders.resize(origins);
  const auto before = total(&plumtree_counters::gossip_sent);
  for (std::uint64_t k = first; k < first + count; ++k) {
    const auto origin = senders[std::uniform_int_distribution<std::size_t>(0, senders.size() - 1)(rng)];
    send_probe(k, origin);
    net.run_for(gap);
  }
  net.run_for(settle_time);
  broadcast_result r;
  double deliveries_minus_one = 0;
  for (std::uint64_t k = first; k < first + count; ++k) {
    std::size_t got = 0;
    std::uint64_t last = 0;
    for (auto& [i, hops] : delivered[k]) {
      if (!alive(i)) continue;
      ++got;
      last = std::max(last, hops);
    }
    r.ldh = std::max(r.ldh, last);
    r.ldh_mean += static_cast<double>(last);
    r.reliability += static_cast<double>(got) / static_cast<double>(live.size());
    r.complete += got == live.size() ? 1.0 : 0.0;
    deliveries_minus_one += got > 0 ? static_cast<double>(got - 1) : 0.0;
  }
  r.reliability /= static_cast<double>(count);
  r.complete /= static_cast<double>(count);
  r.ldh_mean /= static_cast<double>(count);
  const double msgs = static_cast<double>(total(&plumtree_counters::gossip_sent) - before);
  r.rmr = deliveries_minus_one > 0 ? msgs / deliveries_minus_one - 1.0 : 0.0;
  return r;
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

duration formation_limit(std::size_t n) {
  return std::max<duration>(600s, duration{400} * static_cast<duration::rep>(n));
}

// The check walks the whole overlay, cheaply.
duration settle(cluster& c, duration limit) {
  const auto start = c.net.now();
  while (!c.overlay_connected() && c.net.now() - start < limit) c.net.run_for(100ms);
  return c.net.now() - start;
}

duration formed(cluster& c, const options& o) {
  c.form(o.seed);
  c.net.run_for(duration{10} * static_cast<duration::rep>(o.nodes));
  return settle(c, formation_limit(c.nodes.size()));
}

}  // namespace barrel_p2p::sim
