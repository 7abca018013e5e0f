// The measured cluster of barrel-p2p-sim: N real nodes on the simulated
// network, the scenario options, and what a scenario measures (overlay
// shape, the broadcast tree, probe broadcasts' reliability, RMR and LDH).
#pragma once

#include <barrel_p2p/node.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/io_context.hpp>

#include "sim_nemesis.hpp"
#include "sim_trees.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace barrel_p2p::sim {

using namespace std::chrono_literals;

/// What the command line asked for.
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
  std::optional<double> optimization_mean_hops;
  std::optional<std::uint32_t> optimization_samples;
  std::uint64_t jitter_ms = 0;  // per-message link jitter
  std::uint64_t gap_ms = 50;  // steady: between broadcasts
  std::optional<std::uint32_t> prune_after;
  std::optional<double> prune_span_lags;
  std::optional<bool> origin_copies_end_runs;
  std::optional<std::uint64_t> prune_grace_ms;
  std::optional<bool> fetch_answers_join_tree;
  std::optional<std::uint32_t> origin_prune_after;  // 0: per-origin trees off
  std::optional<double> origin_prune_span_lags;
  std::optional<bool> flood_after_graft;
  std::optional<bool> adaptive_graft;  // adaptive_graft_timeout
  // steady: exit 1 when a figure is above its bound (the suite's regression guard)
  std::optional<double> max_rmr, max_graft_prune, min_complete;
  std::optional<std::uint64_t> max_ldh;
  std::optional<double> max_ldh_mean;  // steady: fail above this mean last-delivery hop
  // form, fail, partition: the same kind of bounds (the suite's guard)
  std::optional<std::uint64_t> max_connect_ms;  // form: overlay connected after the last join
  std::optional<double> min_reliability;        // fail: every failure size, after 5 rounds
  std::optional<std::uint64_t> max_converge_ms; // partition: replicas equal after the heal
  bool trace_tree = false;
  double loss = 0;  // steady: message loss on every link once formed
  std::size_t jobs = 1;  // fail: failure sizes run at once, each in a forked copy of the formed cluster
  std::size_t origins = 0;  // steady: broadcasts come from this many fixed nodes (0: any node)
  // The network: 0 regions is one flat network of 5 ms links; 1..5 places
  // node i in region i mod K of measured_regions() (its latencies).
  std::size_t regions = 0;
  std::optional<double> region_jitter;  // share of a link's one-way delay (0.1 when not given)
  double cross_region_loss = 0;    // steady, churn: once formed
  double flaps_per_s = 0;          // steady, churn: random links down for flap_ms, once formed
  std::uint64_t flap_ms = 1000;
  bool nodes_given = false;
  sim::nemesis_options nemesis;
};

/// Every link's one-way latency in the flat network.
constexpr duration link_latency{5};

/// The first `k` (1..5) of five regions on three continents, with the
/// round-trip times measured between them (sources in simulator.md).
sim_regions measured_regions(std::size_t k);

/// measured_regions(o.regions) with the command line's jitter, and
/// `loss_between` between regions.
sim_regions network_regions(const options& o, double loss_between = 0);

/// A probe broadcast: its number, as one CBOR unsigned integer.
shared_bytes probe_payload(std::uint64_t k);

/// N nodes "n0".."n<N-1>" on one simulated network, each subscribed to the
/// probe broadcasts so that every delivery and its hop count is recorded.
struct cluster {
  boost::asio::io_context io;
  sim_network net;
  std::vector<std::unique_ptr<node>> nodes;
  // Deliveries of the probe tag: message number -> (node index -> hops)
  std::map<std::uint64_t, std::map<std::size_t, std::uint64_t>> delivered;

  cluster(std::size_t n, const options& o);

  bool alive(std::size_t i) const { return net.alive(nodes[i]->id()); }

  // Node i joins through a random earlier node, the first `count` nodes
  // (all by default), one after the other with 10 ms between a join's end
  // and the next start; `joins_ended` is set when the last has joined.
  void form(std::uint64_t seed, std::size_t count = SIZE_MAX);
  task<> join_in_turn(std::uint64_t seed, std::size_t count);

  std::vector<std::vector<std::size_t>> graph() const;

  // Connected and symmetric: what settle() polls every 100 ms of virtual
  // time. Incremental: the active views are mirrored from the membership
  // events as they happen, with a count of one-way links, so a check while
  // any link is one-way costs nothing and only a candidate is walked.
  bool overlay_connected() const;

  // Crashes node i (the network's kill, counted: with dead nodes the count
  // of one-way links no longer decides alone).
  void kill(std::size_t i);

  // Each node's active view as node indices, from its membership events.
  std::vector<std::vector<std::uint32_t>> active;
  // Links held by one side only, over all nodes.
  std::size_t asymmetric = 0;
  std::size_t killed = 0;
  // How many nodes form() started (the first ones): the overlay checked.
  std::size_t members = SIZE_MAX;
  std::optional<duration> joins_ended;

  // With regions (node i is in region i mod their number): when each
  // measured probe was sent, and each delivery's latency (ms) by the
  // receiver's region.
  std::vector<std::string> region_names;
  std::size_t region_of(std::size_t i) const { return i % region_names.size(); }
  std::map<std::uint64_t, duration> sent_at;
  std::vector<std::vector<std::uint32_t>> latency_ms;
  struct region_latency {
    std::string name;
    std::size_t assigned = 0, deliveries = 0;  // nodes placed in the region (crashed ones too)
    std::uint32_t p50 = 0, p90 = 0, p99 = 0, max = 0;
  };
  // Per region, over the deliveries recorded since the last call.
  std::vector<region_latency> take_region_latencies();
  // After formation: cross-region loss and link flapping, as asked.
  void start_network_faults(const options& o);
  // How long probe() lets its broadcasts settle after the last.
  duration settle_time{3s};

  void on_membership(std::size_t i, const membership_event& ev);

  struct overlay_stats {
    std::size_t live = 0, asymmetric = 0, reached = 0, min_active = SIZE_MAX, max_active = 0;
    double avg_active = 0, avg_passive = 0, clustering = 0, avg_path = 0;
    double avg_eccentricity = 0;  ///< greatest distance from a source, averaged over the sampled sources: the floor of a message's LDH
    bool connected() const { return reached == live && asymmetric == 0; }
  };

  overlay_stats stats(bool paths) const;

  struct path_stats {
    double avg_path = 0, avg_eccentricity = 0;
  };
  std::vector<bool> live_mask() const;  ///< alive(i) for every node
  path_stats distances(const std::vector<std::vector<std::size_t>>& g, std::size_t first, std::size_t* reached,
                       std::size_t sources = 0) const;

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
    double avg_eccentricity = 0;  ///< over eager links: the floor of a message's LDH on this tree
  };
  tree_stats tree() const;
  double centre_tree_eccentricity() const;

  // How shallow one tree shared by every origin can be on this overlay
  // (sim_trees.hpp).
  shared_tree_depth shared_tree_bounds() const;

  struct broadcast_result {
    double reliability = 0;  ///< live nodes reached / live nodes, averaged over the messages
    double complete = 0;     ///< share of the messages that reached every live node
    double rmr = 0;          ///< payload messages / (deliveries - 1) - 1, over the batch
    std::uint64_t ldh = 0;   ///< greatest hop count of any delivery
    double ldh_mean = 0;     ///< the greatest hop count of each message, averaged over the messages (the paper's LDH)
  };

  // Probe `k` from `origin`, recorded as delivered there (hop 0) and, with
  // regions, timed.
  void send_probe(std::uint64_t k, std::size_t origin);

  // One broadcast from a random live node, not measured (traffic).
  void send_unmeasured(std::uint64_t k, random_engine& rng);

  // Broadcasts `count` probes from random live nodes, one every `gap`, then
  // lets them settle (delivery, and grafts for what was lost).
  broadcast_result probe(std::uint64_t first, std::size_t count, duration gap, random_engine& rng,
                         std::size_t origins = 0);
};

/// `v` with three decimals.
std::string fmt(double v);

/// Runs until the overlay is connected and symmetric, checking every 100 ms
/// of virtual time; returns how long that took (`limit` at most).
duration settle(cluster& c, duration limit);

/// How long formation may take before a scenario goes on regardless: 600 s,
/// or 400 ms a node (a join across regions takes a few round trips, so
/// 10,000 nodes on `--regions 5` join for about half an hour of virtual time).
duration formation_limit(std::size_t n);

/// Every node joins (form), then the overlay settles: runs 10 ms x N, then
/// until the overlay is connected (which is not before the last join).
/// Returns the time spent in the second part.
duration formed(cluster& c, const options& o);

}  // namespace barrel_p2p::sim
