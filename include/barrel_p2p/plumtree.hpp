// Plumtree: epidemic broadcast trees (Leitão, Pereira, Rodrigues, "Epidemic
// Broadcast Trees", SRDS 2007) over the HyParView active view.
//
// Each node splits its active peers into EAGER peers (it pushes whole
// messages to them: the edges of a spanning tree) and LAZY peers (it only
// announces message ids to them, batched). A duplicate GOSSIP reveals a
// redundant edge: its sender is PRUNEd to lazy. An IHAVE for a message that
// does not arrive in time makes the node GRAFT the announcer back to eager
// and fetch the message: the tree repairs itself, and the lazy links make
// delivery reliable under loss and failures.
//
// Messages (channel broadcast): GOSSIP, IHAVE, GRAFT, PRUNE, in
// plumtree_messages.hpp. A payload is bytes, encoded once at its origin and
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
  /// Received messages are kept this long (to answer GRAFTs and to
  /// recognise duplicates), and at most this many, holding at most this
  /// many payload bytes (the oldest go first).
  duration cache_ttl{300'000};
  std::size_t cache_max_messages = 100'000;
  std::size_t cache_max_bytes = 64 * 1024 * 1024;
  /// Most message ids tracked as missing at once (bounded memory under an
  /// IHAVE flood).
  std::size_t max_missing = 100'000;
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
  std::uint64_t bad_messages = 0;     ///< malformed broadcast messages dropped
  std::uint64_t cache_size = 0;       ///< gauge: messages cached
  std::uint64_t cache_bytes = 0;      ///< gauge: payload bytes cached
  std::uint64_t missing = 0;          ///< gauge: ids announced, not yet received
};

class plumtree {
 public:
  /// Called once per message, on every node but its origin, in the order
  /// received. `origin` is the node that broadcast it; `hops` the number of
  /// links the payload crossed to get here (1 for the origin's neighbours).
  /// `payload` is the bytes the origin broadcast (the handler decodes them;
  /// they may be kept, they are immutable and shared).
  using delivery_handler = std::function<void(const std::string& tag, const byte_slice& payload,
                                              const std::string& origin, std::uint64_t hops)>;

  plumtree(transport& net, hyparview& membership, scheduler& sched, plumtree_config config = {});
  ~plumtree();
  plumtree(const plumtree&) = delete;
  plumtree& operator=(const plumtree&) = delete;

  /// Registers the transport handler and membership listener, seeds the
  /// eager set from the current active view, starts the timers loop.
  void start();
  /// Ends the loop; returns when it has.
  task<> stop();

  /// Broadcasts `payload` under `tag` to every node. Not delivered locally:
  /// the caller has the payload already. The bytes are sent as they are
  /// (typically one CBOR item, see encode_cbor) and shared, not copied.
  void broadcast(const std::string& tag, shared_bytes payload);

  /// Deliveries for `tag` go to `handler`. Throws std::invalid_argument if
  /// the tag already has a subscriber: tags scope one consumer per node.
  void subscribe(const std::string& tag, delivery_handler handler);
  void unsubscribe(const std::string& tag);

  [[nodiscard]] std::vector<std::string> eager_peers() const;
  [[nodiscard]] std::vector<std::string> lazy_peers() const;
  [[nodiscard]] const plumtree_counters& counters() const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
