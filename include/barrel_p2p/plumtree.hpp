// Plumtree: epidemic broadcast trees (Leitão, Pereira, Rodrigues, "Epidemic
// Broadcast Trees", SRDS 2007) over the HyParView active view.
//
// Each node splits its active peers into EAGER peers (it pushes whole
// messages to them: the edges of a spanning tree) and LAZY peers (it only
// announces message ids to them, batched). Duplicate GOSSIPs reveal a
// redundant edge: after prune_after_duplicates in a row its sender is
// PRUNEd to lazy (the paper prunes on the first; with many senders that
// shatters the tree, docs/concepts/broadcast.md). An IHAVE for a message
// that does not arrive in time makes the node GRAFT an announcer back to
// eager and fetch the message: the tree repairs itself, and the lazy links
// make delivery reliable under loss and failures.
//
// Messages (channel broadcast): GOSSIP, IHAVE, GRAFT, PRUNE, in
// detail/plumtree_messages.hpp. A payload is bytes, encoded once at its origin and
// never decoded or re-encoded here: relays forward the bytes they received,
// the cache holds them, subscribers decode them.
#pragma once

#include <barrel_p2p/hyparview.hpp>
#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/transport.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace barrel_p2p {

struct plumtree_config {
  /// IHAVE announcements to a lazy peer are batched and sent this often.
  duration ihave_interval{100};
  /// Most ids in one IHAVE message (larger batches are split).
  std::size_t ihave_batch_max = 512;
  /// A message announced by IHAVE but not received within graft_timeout is
  /// GRAFTed from its first announcer; if still missing after
  /// graft_retry_timeout, from the next one, and so on.
  duration graft_timeout{500};
  duration graft_retry_timeout{250};
  /// Adaptive graft timeout, off by default: the wait before grafting an
  /// announced message follows how long after its first announcement the
  /// tree's copy arrives here: the smoothed delay plus four deviations, as
  /// TCP's retransmission timer (RFC 6298), within [graft_timeout_min,
  /// graft_timeout_max], starting at graft_timeout. A copy that comes after
  /// its graft counts too (its whole delay since the announcement), which
  /// lengthens the wait; the graft's own answer is no sample.
  /// Measured in docs/concepts/broadcast.md.
  bool adaptive_graft_timeout = false;
  duration graft_timeout_min{20};
  duration graft_timeout_max{5000};
  /// Each graft timeout is drawn from [graft_timeout, graft_timeout * (1 +
  /// graft_jitter)].
  double graft_jitter = 0.0;
  /// For repair_window after losing an eager link, a node grafts announced
  /// messages after repair_graft_timeout instead: it sits at the cut, and
  /// its early graft reconnects the tree before the nodes behind the cut
  /// (whose timers run the full graft_timeout) graft in parallel.
  duration repair_graft_timeout{50};
  duration repair_window{2000};
  /// A new active link starts lazy when this node already has eager links
  /// (it is in the tree); eager otherwise. false: every new link starts
  /// eager, as in the paper.
  bool lazy_new_links = false;
  /// An eager link is pruned after this many duplicates in a row from it
  /// (the paper prunes on the first; see docs/concepts/broadcast.md)...
  std::uint32_t prune_after_duplicates = 3;
  /// ... once that run has also lasted this many times the delay by which
  /// the link's duplicates trail the first copies (smoothed). On slow paths
  /// many messages are in flight at once, and a count alone lets both ends
  /// of a cycle prune before either prune arrives, which cuts the tree.
  /// 0: the count alone.
  double prune_span_lags = 8;
  /// Whether a peer's first copy of its own message (the peer is the
  /// origin) ends its run of duplicates, as other first copies do. Such a
  /// copy proves nothing about the link: a neighbour's own messages come
  /// first over the direct link whether or not it is in the tree, so with
  /// every node broadcasting they would end every run and keep every
  /// cycle eager. false: they neither count nor end the run (measured in
  /// docs/concepts/broadcast.md, "Every node writing").
  bool origin_copies_end_runs = false;
  /// After this node prunes a link, for this long a first copy over it
  /// does not bring it back into the tree: with many messages in flight the
  /// peer pushed it before the PRUNE arrived, and taking the link back
  /// would only start another run of duplicates. 0 (the default): any first
  /// copy brings its link back, as in the paper. Measured in
  /// docs/concepts/broadcast.md ("A first copy sent before the PRUNE").
  duration prune_grace{0};
  /// Whether the answer to a fetch brings its link into this node's tree.
  /// A fetch asks a lazy peer for one message without taking the link
  /// into the tree (GRAFT, then PRUNE: the far side keeps it lazy); true
  /// (the default, as before): the answer, a first copy, makes the link
  /// eager on this side all the same, until duplicates prune it. false:
  /// it stays lazy on both sides. Measured in docs/concepts/broadcast.md
  /// ("A first copy sent before the PRUNE").
  bool fetch_answers_join_tree = true;
  /// Per-origin trees over the shared one (riak_core_broadcast keeps its
  /// eager and lazy sets per root), off by default: a link that delivers
  /// this many duplicates in a row of one origin's messages
  /// (copies of other origins' messages neither count nor end the run)
  /// leaves that origin's tree only. This node sends PRUNE [3, origin], and
  /// neither end pushes that origin's messages over the link any more: both
  /// announce them, and a GRAFT for one of them brings the link back into
  /// that origin's tree. It settles a cluster where every node broadcasts
  /// at once faster than the shared rule, but where the shared tree
  /// settles it cuts origins' trees and costs grafts (measured in
  /// docs/concepts/broadcast.md, "Per-origin trees"). 0: off.
  std::uint32_t origin_prune_after_duplicates = 0;
  /// ... once that run has also lasted this many times the link's lag (as
  /// prune_span_lags). 0: the count alone.
  double origin_prune_span_lags = 0;
  /// Most origins with per-origin state at once (origins come from peers);
  /// past it the state of one is dropped, which costs duplicates only.
  /// Used with the rule off too: a peer that runs it prunes this node.
  /// Must be > 0.
  std::size_t max_origin_trees = 1024;
  /// A message that came as the answer to this node's GRAFT is pushed to
  /// every peer, lazy ones too: the tree is broken around here, and an
  /// announcement would cost each node further on another graft timeout.
  bool flood_after_graft = true;
  /// The paper's optimisation: when a lazy peer announced a message at
  /// least this many hops closer to its origin than the eager copy that
  /// came, the announcer's link replaces the sender's in the tree. 0: off.
  std::uint64_t optimization_threshold = 0;
  /// At most one optimisation per node this often (0: no limit).
  duration optimization_interval{0};
  /// The optimisation judged on average, across origins (0: off; used
  /// beside or instead of optimization_threshold's one-message rule). For
  /// each pair of a lazy peer and an eager one, this node tracks how many
  /// hops sooner the lazy peer's announcements offer the messages that
  /// came by the eager one (smoothed; negative when later). Once
  /// optimization_samples of them average at least this many hops, and
  /// the message at hand came the longer way too, the lazy link replaces
  /// the eager one in the tree. With many origins a path shorter for one
  /// origin is longer for another, and the one-message rule swaps back
  /// and forth; the average swaps only when the new link is shorter for
  /// the messages the old one brought. Must be in [0, 1000].
  double optimization_mean_hops = 0;
  /// Samples a pair needs before optimization_mean_hops judges it; must
  /// be > 0.
  std::uint32_t optimization_samples = 16;
  /// Received messages are kept this long (to answer GRAFTs and to
  /// recognise duplicates), and at most this many, holding at most this
  /// many payload bytes (the oldest go first).
  duration cache_ttl{300'000};
  std::size_t cache_max_messages = 100'000;
  std::size_t cache_max_bytes = 64 * 1024 * 1024;
  /// Most message ids tracked as missing at once (bounded memory under an
  /// IHAVE flood).
  std::size_t max_missing = 100'000;
  /// GRAFT answers: payload bytes re-sent to one peer, at most this many per
  /// second on average, in bursts of at most graft_answer_burst_bytes (a
  /// token bucket per peer). A 30-byte GRAFT can ask for a 4 MiB payload;
  /// without a bound, one member could make a node send gigabytes. A GRAFT
  /// over the budget goes unanswered (counted in graft_answers_throttled):
  /// the grafter asks its next announcer. The burst must hold the largest
  /// payload (the transport's max_frame_bytes), or that one is never sent.
  std::size_t graft_answer_bytes_per_second = 16 * 1024 * 1024;
  std::size_t graft_answer_burst_bytes = 16 * 1024 * 1024;
  /// Flow control over the transport's send queue to each peer. An eager
  /// peer whose queue is fuller than congested_fill (of its limits) gets
  /// an announcement instead of the payload, and grafts it if no other
  /// copy comes first; its GRAFTs wait for room too (unanswered and
  /// counted, the grafter asks again), and so do GRAFTs to it. Other
  /// messages are not held to this fill and find the rest of the queue
  /// free, so a busy link slows the tree down around it instead of
  /// dropping. In (0, 1]; 1: push until the transport drops.
  double congested_fill = 0.75;
  /// Local writes wait (see room_for_writes) while an eager peer's queue
  /// is fuller than write_room_fill, in (0, congested_fill]...
  double write_room_fill = 0.5;
  /// ... unless the write in progress to that peer has lasted at least
  /// this long (> 0): a peer that takes nothing (stopped, or behind a
  /// path slower than the writers) must not hold up the cluster's writes.
  /// It gets announcements once congested, and catches up by GRAFT or
  /// anti-entropy. A batch write (up to 1 MiB) on a slow link counts too.
  duration slow_peer_after{20};
  /// Seed of this node's generator (0: from std::random_device).
  std::uint64_t seed = 0;
  /// One-line log sink. Empty: silent.
  std::function<void(const std::string&)> log;
};

struct plumtree_counters {
  std::uint64_t broadcasts = 0;       ///< originated here
  std::uint64_t gossip_sent = 0;      ///< payload messages sent (eager push and graft answers)
  std::uint64_t gossip_received = 0;
  std::uint64_t delivered = 0;        ///< first receipts handed to a subscriber
  std::uint64_t duplicates = 0;       ///< payloads received again
  std::uint64_t ihave_sent = 0;       ///< IHAVE messages (batches)
  std::uint64_t ihave_ids_sent = 0;   ///< ids announced in them
  std::uint64_t graft_sent = 0;
  std::uint64_t prune_sent = 0;
  std::uint64_t graft_received = 0;
  std::uint64_t prune_received = 0;
  /// Duplicates of a message this node had grafted: the eager copy came
  /// after all (the graft timer fired too early for that path).
  std::uint64_t duplicates_after_graft = 0;
  /// Eager peers that left the active view (each cuts the tree until a
  /// graft repairs it).
  std::uint64_t tree_links_lost = 0;
  /// Tree links swapped for shorter paths (the paper's optimisation).
  std::uint64_t optimizations = 0;
  std::uint64_t bad_messages = 0;     ///< malformed broadcast messages dropped
  /// GRAFTs not answered: the asking peer's answer budget was spent.
  std::uint64_t graft_answers_throttled = 0;
  /// Payloads for an eager peer sent as announcements instead: its send
  /// queue was over congested_fill.
  std::uint64_t congested_announcements = 0;
  /// GRAFTs not answered because the grafter's send queue was over
  /// congested_fill (it asks again).
  std::uint64_t graft_answers_deferred = 0;
  /// GRAFTs not sent yet: the send queue to the announcer was over
  /// congested_fill (sent at a later tick).
  std::uint64_t grafts_deferred = 0;
  /// PRUNEs for one origin's messages (origin_prune_after_duplicates).
  std::uint64_t origin_prunes_sent = 0;
  std::uint64_t origin_prunes_received = 0;
  std::uint64_t origin_trees = 0;     ///< gauge: origins with per-origin state
  std::uint64_t cache_size = 0;       ///< gauge: messages cached
  std::uint64_t cache_bytes = 0;      ///< gauge: payload bytes cached
  std::uint64_t missing = 0;          ///< gauge: ids announced, not yet received
  /// gauge: the wait before grafting an announced message, ms
  /// (graft_timeout unless adaptive_graft_timeout).
  std::uint64_t graft_wait_ms = 0;
};

/// Once constructed, every member is called on the node's executor (the
/// scheduler's); none hops onto it. `net`, `membership` and `sched` are held
/// by reference and must outlive this object (the node owns all four and
/// destroys the plumtree first).
class plumtree {
 public:
  /// One message handed to a subscriber. The views are valid during the
  /// call only; the payload may be kept.
  struct delivery {
    std::string_view tag;
    byte_slice payload;       ///< the bytes the origin broadcast, immutable and shared
    std::string_view origin;  ///< the node that broadcast it
    std::uint64_t hops = 0;   ///< links crossed to get here (1 for the origin's neighbours)
    std::string_view from;    ///< the neighbour it came from: whose reading to hold when
                              ///< the subscriber's queued work is over its budget
  };
  /// Called once per message, on every node but its origin, in the order
  /// received, on the node's executor; it must not block.
  using delivery_handler = std::function<void(const delivery&)>;

  plumtree(transport& net, hyparview& membership, scheduler& sched, plumtree_config config = {});
  /// Unregisters the transport handler and cancels the loop; the membership
  /// listener it added stays, but does nothing once this is gone.
  ~plumtree();
  plumtree(const plumtree&) = delete;
  plumtree& operator=(const plumtree&) = delete;

  /// Registers the transport handler and membership listener, seeds the
  /// eager set from the current active view, starts the timers loop.
  /// Once (a second call does nothing).
  void start();
  /// Ends the loop; returns when it has. The object must outlive it.
  task<> stop();

  /// Broadcasts `payload` under `tag` to every node. Not delivered locally:
  /// the caller has the payload already. The bytes are sent as they are
  /// (typically one CBOR item, see encode_cbor) and shared, not copied:
  /// the cache keeps them (at most cache_ttl) to answer GRAFTs.
  void broadcast(const std::string& tag, shared_bytes payload);

  /// Deliveries for `tag` go to `handler`. Throws std::invalid_argument if
  /// the tag already has a subscriber: tags scope one consumer per node.
  /// The handler is kept until unsubscribe() or destruction: what it
  /// captures must live that long (or be held weakly).
  void subscribe(const std::string& tag, delivery_handler handler);
  /// Not from inside that tag's handler: it would destroy the running one.
  void unsubscribe(const std::string& tag);

  /// Whether a local write may go out now: every eager peer's send queue,
  /// with `admitted` more messages (writes let through and not yet
  /// broadcast), is at most write_room_fill full, or that peer is slow
  /// (slow_peer_after). Lazy peers do not count: they get announcements.
  /// The replica layer waits for it before each local write.
  [[nodiscard]] bool room_for_writes(std::size_t admitted) const;
  /// How long room_for_writes may turn true with no send progress
  /// (transport::on_send_progress): until the first write in progress to
  /// an eager peer has lasted slow_peer_after. A writer waiting for room
  /// looks again after at most this long.
  [[nodiscard]] duration write_room_recheck() const;

  [[nodiscard]] std::vector<std::string> eager_peers() const;
  [[nodiscard]] std::vector<std::string> lazy_peers() const;
  /// Live counters, valid as long as this object.
  [[nodiscard]] const plumtree_counters& counters() const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
