// HyParView membership (Leitão, Pereira, Rodrigues, "HyParView: a membership
// protocol for reliable gossip-based broadcast", DSN 2007).
//
// Each node keeps a small, symmetric ACTIVE view (open connections; the peers
// broadcast runs over) and a larger PASSIVE view (addresses in reserve). A
// failed active peer is replaced from the passive view; a periodic SHUFFLE
// random walk keeps passive views fresh and well mixed.
//
// Messages (channel membership): JOIN, FORWARD_JOIN (random walk of ARWL
// hops; the passive view learns the joiner at PRWL), NEIGHBOR (high priority
// when the asker's active view is empty: must be accepted; low priority:
// accepted only with room), NEIGHBOR_REPLY, DISCONNECT (eviction or leave),
// SHUFFLE and SHUFFLE_REPLY. Failure detection is the transport's
// (connection loss, heartbeats).
#pragma once

#include <barrel_p2p/event_stream.hpp>
#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/transport.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace barrel_p2p {

struct hyparview_config {
  /// Active view size: the fan-out of broadcast. log(N)+c in the paper; 5
  /// serves clusters of thousands.
  std::size_t active_size = 5;
  /// Passive view size: the reserve used to repair the active view.
  std::size_t passive_size = 30;
  /// Active and passive random walk lengths of FORWARD_JOIN (and SHUFFLE).
  unsigned arwl = 6;
  unsigned prwl = 3;
  /// Descriptors in one SHUFFLE: this node, shuffle_active from the active
  /// view and the rest from the passive view (8 in all by default).
  std::size_t shuffle_length = 8;
  std::size_t shuffle_active = 3;
  duration shuffle_interval{10'000};
  /// How often the active view is checked and repaired, and how long a
  /// connection outside the active view may stay open (a shuffle reply, a
  /// refused NEIGHBOR) before it is closed.
  duration maintenance_interval{500};
  duration stray_connection_grace{3'000};
  /// How long to wait for a NEIGHBOR_REPLY.
  duration neighbor_timeout{3'000};
  /// Backoff between rejoin attempts through the contacts while the active
  /// view is empty: doubles from
  /// initial to max.
  duration backoff_initial{500};
  duration backoff_max{30'000};
  /// Passive entries not refreshed (by a join, a shuffle, a disconnect) for
  /// this long are dropped: they are likely gone.
  duration passive_max_age{600'000};
  /// Failed dials after which a passive entry is dropped. Shuffles refresh
  /// entries they carry, so a dead peer's entry would otherwise never age
  /// out; a live peer that failed (a partition) comes back through shuffles
  /// or the contacts.
  unsigned passive_max_failures = 5;
  /// Chance per shuffle round that a node with a full active view swaps one
  /// active peer for a random passive peer or a contact not in its views.
  /// Not in the paper: it is what rejoins the halves of a healed partition
  /// (each half's views are full, so the paper's repair never looks across).
  double random_promotion = 0.05;
  /// Bounds on what other members' messages can make this node do (a
  /// misbehaving member, or a bug), each a token bucket that starts full:
  ///  * evictions of an active peer forced by a high-priority NEIGHBOR or a
  ///    JOIN on a full view, per second (burst 4x); beyond it a NEIGHBOR is
  ///    answered as a low-priority one and a joiner goes to the passive view;
  double evictions_per_second = 1.0;
  ///  * JOINs turned into FORWARD_JOIN walks, per second (burst 4x); a JOIN
  ///    from a peer already in the active view is never forwarded again;
  double join_forwards_per_second = 5.0;
  ///  * dials one peer's messages can start (the end of its FORWARD_JOIN
  ///    walk, the reply to its SHUFFLE), per second and peer (burst 4x),
  ///    and such dials in flight at once, over all peers.
  double dials_per_peer_per_second = 2.0;
  std::size_t max_dials_in_flight = 16;
  /// Timers are jittered by ± this fraction so nodes do not act in step.
  double jitter = 0.25;
  /// Seed of this node's generator (0: from std::random_device).
  std::uint64_t seed = 0;
  /// One-line log sink for membership changes. Empty: silent.
  std::function<void(const std::string&)> log;
};

struct membership_event {
  enum class kind { peer_up, peer_down, joined, left };
  kind what;
  peer_descriptor peer;  ///< empty for joined / left
  std::string reason;    ///< peer_down: evicted, disconnect, left, or a transport reason (heartbeat_timeout, closed_by_peer, ...)
};
[[nodiscard]] const char* to_string(membership_event::kind k) noexcept;

struct hyparview_counters {
  std::uint64_t joins_received = 0;
  std::uint64_t forward_joins = 0;
  std::uint64_t neighbor_requests = 0;
  std::uint64_t neighbor_rejected = 0;
  std::uint64_t disconnects_sent = 0;
  std::uint64_t shuffles_sent = 0;
  std::uint64_t shuffles_received = 0;
  std::uint64_t peers_up = 0;
  std::uint64_t peers_down = 0;
  std::uint64_t promotions = 0;         ///< passive -> active repairs
  std::uint64_t swaps = 0;              ///< random promotions started (an active peer swapped for another)
  std::uint64_t bad_messages = 0;       ///< malformed membership messages dropped
  std::uint64_t evictions_refused = 0;  ///< high-priority NEIGHBORs or JOINs over evictions_per_second
  std::uint64_t joins_not_forwarded = 0;  ///< JOINs repeated by an active peer or over join_forwards_per_second
  std::uint64_t dials_refused = 0;      ///< dials a peer's message asked for, over its budget
};

/// Once constructed, every member is called on the node's executor (the
/// scheduler's); none hops onto it. `net` and `sched` are held by reference
/// and must outlive this object (the node owns them and destroys it first).
class hyparview {
 public:
  /// Synchronous listener for the layers above (broadcast, replicas): runs
  /// on the node's executor as the view changes, before stream subscribers.
  /// It must not block.
  using listener = std::function<void(const membership_event&)>;

  hyparview(transport& net, scheduler& sched, hyparview_config config = {});
  /// Unregisters the transport handlers and cancels the loops; a loop or
  /// join() still suspended keeps the view state alive until it ends.
  ~hyparview();
  hyparview(const hyparview&) = delete;
  hyparview& operator=(const hyparview&) = delete;

  /// Registers the transport handlers and starts the membership loops.
  /// Call once, before join().
  void start();

  /// Joins the cluster through `contact`. Returns true when the contact
  /// accepted the connection; on false, the node keeps retrying the contact
  /// (with backoff) while its active view is empty. It keeps the view
  /// state alive: this object may be destroyed while it dials.
  task<bool> join(peer_address contact);
  /// Remembers `contact` for later rejoins (tried in order while the active
  /// view is empty) without dialling it now. The node's start() remembers
  /// every configured contact, not only the one that took it in: that one
  /// may be the first to go.
  void remember_contact(peer_address contact);

  /// Leaves: tells every active peer (DISCONNECT), closes connections, stops
  /// the loops, publishes `left`. The object can then be destroyed, not
  /// before: it must outlive this call.
  task<> leave();

  [[nodiscard]] std::vector<peer_descriptor> active_view() const;  ///< a copy
  [[nodiscard]] std::vector<peer_descriptor> passive_view() const;  ///< a copy
  [[nodiscard]] bool is_active(const std::string& peer_id) const;
  /// The transport's descriptor of this node (a TCP transport sets its
  /// port at start).
  [[nodiscard]] const peer_descriptor& self() const;
  /// Live counters, valid as long as this object.
  [[nodiscard]] const hyparview_counters& counters() const;

  /// An awaitable stream of membership events (bounded; see event_stream),
  /// from now on, read on the node's executor; it ends after `left`.
  [[nodiscard]] event_stream<membership_event> subscribe(std::size_t capacity = 1024);
  /// Adds `l` for the life of this object (there is no removal): what it
  /// captures must live that long, or be held weakly.
  void add_listener(listener l);

  /// When the active view is full and a peer must make room (a swap, a
  /// joiner, a high-priority NEIGHBOR), the peers for which `keep` returns
  /// true go last. The broadcast layer passes "is a link of the tree", so
  /// that view changes cut the broadcast tree as rarely as they can.
  /// It applies from the next eviction.
  void set_eviction_preference(std::function<bool(const std::string& peer_id)> keep);

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
