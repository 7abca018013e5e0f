// The in-process simulated network: many nodes in one process, on virtual
// time, deterministic from a seed.
//
// Every component above the transport runs on it unchanged: each node gets a
// transport (addresses are {"sim", index}) and a scheduler whose sleeps are
// events on one virtual timeline. run_for() executes the timeline: it runs
// every ready coroutine on the io_context, then jumps virtual time to the next
// event. With one thread and a seeded generator, the same seed gives the same
// sequence of events.
//
// Failure model: a message is delivered after latency ± jitter (jitter
// reorders), may be lost or duplicated; partitions (also one-way) drop
// messages and, like heartbeats would, close the connections that cross them
// after failure_detection; a killed node is silent (a crash): its peers see
// the connection fail after failure_detection. A killed node's objects keep
// running in isolation; revive() reconnects it to the network. Nodes may sit
// in regions (set_regions): a link's delay is then half its regions'
// round-trip time, and links may flap (go down for a while, then back).
#pragma once

#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/transport.hpp>

#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace barrel_p2p {

struct sim_config {
  /// One-way delivery time, and the uniform ± jitter around it.
  duration latency{5};
  duration jitter{2};
  /// Probability that a message is lost, or delivered twice.
  double loss = 0.0;
  double duplicate = 0.0;
  /// How long a peer takes to notice a crash or a cut link (the heartbeat
  /// timeout of a real transport).
  duration failure_detection{3000};
  /// How long a dial to an unreachable node takes to fail.
  duration connect_timeout{1000};
  /// Virtual wall clock at time zero (HLC source), ms since the epoch.
  std::uint64_t epoch_ms = 1'700'000'000'000;
  std::uint64_t seed = 1;
};

/// A network spread over regions: a message between regions i and j takes
/// half of rtt[i][j] (rtt[i][i]: within region i), rounded up to whole ms,
/// plus or minus up to `jitter_share` of that (whole ms: none on a 1 ms hop); it is lost with `loss_within` or
/// `loss_between` (on top of sim_config::loss).
struct sim_regions {
  std::vector<std::string> names;             ///< one per region
  std::vector<std::vector<duration>> rtt;     ///< square, symmetric, names.size() wide
  double jitter_share = 0.1;
  double loss_within = 0.0;
  double loss_between = 0.0;
};

/// Traffic seen by the whole network.
struct sim_stats {
  std::uint64_t messages_sent = 0;
  std::uint64_t messages_delivered = 0;
  std::uint64_t messages_lost = 0;  ///< loss, partitions, dead nodes
  std::uint64_t bytes_sent = 0;
  std::uint64_t events = 0;         ///< timeline events executed
  std::uint64_t links_flapped = 0;  ///< link outages started by flap()/set_flapping()
  std::uint64_t messages_held = 0;  ///< messages that waited for a flapping link
  std::uint64_t per_channel_sent[channel_count] = {};
};

class sim_network {
 public:
  explicit sim_network(boost::asio::io_context& io, sim_config config = {});
  ~sim_network();
  sim_network(const sim_network&) = delete;
  sim_network& operator=(const sim_network&) = delete;

  /// Creates a node's transport. Its address is {"sim", index}.
  [[nodiscard]] std::unique_ptr<transport> add_node(const std::string& id);
  /// A scheduler on the virtual timeline; `wall_skew` shifts its wall clock
  /// (to test HLCs under clock skew).
  [[nodiscard]] std::unique_ptr<scheduler> make_scheduler(duration wall_skew = duration{0});
  /// The scheduler of node `id` (added already): its wall clock is shifted
  /// by the node's skew, which set_wall_skew changes at any time.
  [[nodiscard]] std::unique_ptr<scheduler> make_scheduler(const std::string& id);
  /// Shifts node `id`'s wall clock (a broken NTP, a clock step); monotonic
  /// time is not affected.
  void set_wall_skew(const std::string& id, duration skew);

  /// Executes the timeline for `d` of virtual time.
  void run_for(duration d);
  /// Executes until `done()` holds (checked between events) or `limit` of
  /// virtual time passed. Returns done().
  bool run_until(const std::function<bool()>& done, duration limit);
  [[nodiscard]] duration now() const;

  /// Faults. Node ids must have been added.
  void kill(const std::string& id);
  void revive(const std::string& id);
  [[nodiscard]] bool alive(const std::string& id) const;
  /// Drops traffic from every node in `a` to every node in `b` (and back,
  /// unless one_way), and fails the connections between them.
  void partition(const std::set<std::string>& a, const std::set<std::string>& b,
                 bool one_way = false);
  void heal();
  void set_loss(double loss);
  /// Delivers this share of messages twice.
  void set_duplicate(double share);
  /// Every link's one-way delay from now on: `latency` plus or minus up to
  /// `jitter` (jitter reorders messages on a link, as a path change would).
  void set_latency(duration latency, duration jitter);
  /// From now on links follow `r` (throws std::invalid_argument when the
  /// matrix is not square and symmetric with one row per name). Every node
  /// is in region 0 until set_region() places it.
  void set_regions(sim_regions r);
  void set_region(const std::string& id, std::size_t region);
  [[nodiscard]] std::size_t region_of(const std::string& id) const;
  /// The one-way delay between two nodes before jitter and slow-node delays.
  [[nodiscard]] duration base_delay(const std::string& a, const std::string& b) const;
  /// The link between a and b (if any) goes down for `down_for`: what is
  /// sent on it waits and arrives after it is back, as TCP's
  /// retransmissions would deliver it; an outage of failure_detection or
  /// more closes the link on both sides, as heartbeats would. While it
  /// lasts, a new connection between the two fails as across a partition.
  void flap(const std::string& a, const std::string& b, duration down_for);
  /// About `per_second` times a second (every 1000/per_second ms, in whole
  /// ms), a random live node's link to a random live peer flaps for
  /// `down_for`; best effort: a tick that finds no such link in a few draws
  /// flaps nothing. 0 stops it.
  void set_flapping(double per_second, duration down_for);
  /// A slow node: `extra` is added to the delay of every message it sends
  /// or receives (a loaded host, a congested uplink). 0 undoes it.
  void set_node_delay(const std::string& id, duration extra);

  [[nodiscard]] const sim_stats& stats() const;
  [[nodiscard]] const sim_config& config() const;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace barrel_p2p
