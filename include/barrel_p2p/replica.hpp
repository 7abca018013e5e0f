// The replica driver: the gossip/CRDT engine behind replicated maps and
// leader election (docs/reference/replica.md, after the Erlang
// barrel_p2p_replica).
//
// A named instance gossips OR-Map deltas over Plumtree under a tag equal to
// its name, routes incoming deltas to its callbacks (the OWNER, which holds
// the actual map), syncs state with peers when they connect and when it
// starts late, and drops a node's entries on peer_down. It can run periodic,
// jittered anti-entropy rounds for owners whose snapshot is the whole state.
// Owners that keep a sync_index (the map) sync by range reconciliation,
// moving only what differs; others push and pull whole snapshots.
#pragma once

#include <barrel_p2p/hlc.hpp>
#include <barrel_p2p/hyparview.hpp>
#include <barrel_p2p/plumtree.hpp>
#include <barrel_p2p/range_sync.hpp>
#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/transport.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace barrel_p2p {

/// What a replica instance's owner implements. Every callback receives the
/// instance name first, so one object can back several instances. All run
/// on the node's executor. Those for peer data (merge_delta, merge_custom,
/// apply_full_sync, and the snapshots it sends to peers) come from the instance's
/// inbox: one at a time, in arrival order; one that throws is counted and
/// logged, and the instance keeps running. A local write
/// (broadcast_update, broadcast_custom) calls merge_delta or merge_custom
/// directly, in the writer's coroutine: that call may overlap one from the
/// inbox while either is suspended, and what it throws reaches the writer.
class replica_callbacks {
 public:
  virtual ~replica_callbacks() = default;

  /// Merge an incoming delta (a wire-form OR-Map, see crdt_wire) into the
  /// owner's map and run its side effects. Peer-supplied: validate it
  /// (crdt_wire::ingest does).
  virtual task<> merge_delta(const std::string& name, const json& delta) = 0;
  /// Apply a snapshot received from a peer (on connect, on pull).
  virtual task<> apply_full_sync(const std::string& name, const json& snapshot) = 0;
  /// The same snapshot as the CBOR bytes it arrived in (one item that
  /// decode_cbor decodes), valid until the returned task completes.
  /// Optional: the default decodes it and calls apply_full_sync. The map
  /// reads its entries straight from the bytes (crdt_wire::ingest_cbor).
  virtual task<> apply_full_sync_cbor(const std::string& name, std::span<const std::uint8_t> snapshot);
  /// The snapshot to push to a peer, or nullopt when there is nothing.
  virtual task<std::optional<json>> full_sync_snapshot(const std::string& name) = 0;
  /// A node left or failed: drop what it owned, or do nothing.
  virtual task<> remove_node(const std::string& name, const std::string& node_id) = 0;
  /// A broadcast_custom payload. Optional.
  virtual task<> merge_custom(const std::string& name, const json& payload);
  /// True to run periodic anti-entropy. Only for owners whose snapshot is
  /// the WHOLE state and whose removals are tombstones, so that a re-pull
  /// cannot resurrect a removed entry. Optional (default false).
  virtual bool anti_entropy() const { return false; }

  /// Optional, range reconciliation (range_sync.hpp): the owner's items,
  /// kept current as its entries change. An owner that returns an index
  /// syncs with a peer by their differences (on connect, on a late start,
  /// request_sync, and anti-entropy rounds when anti_entropy() is true)
  /// instead of whole snapshots; nullptr (the default) keeps whole
  /// snapshots. Removals must be tombstones, as for anti_entropy().
  virtual const sync_index* sync_items(const std::string& name);
  /// With sync_items: a snapshot (apply_full_sync's shape) of the entries
  /// behind `items` that are still current, or nullopt when none is.
  virtual task<std::optional<json>> snapshot_of(const std::string& name, const std::vector<sync_item>& items);
  /// With sync_items, optional: snapshot_of's answer already encoded as
  /// CBOR (crdt_wire::write_items), so that syncing a large state builds no
  /// json tree. The default encodes what snapshot_of returns.
  virtual task<std::optional<std::vector<std::uint8_t>>> snapshot_cbor_of(const std::string& name,
                                                                          const std::vector<sync_item>& items);
};

struct replica_config {
  /// Mean interval between anti-entropy pulls (each jittered by ±25 %).
  /// A round with equal states costs one fingerprint message for an owner
  /// that reconciles by ranges (sync_items), the map; an owner without it
  /// pulls a whole snapshot each round and may want a longer interval.
  duration anti_entropy_interval{5'000};
  double anti_entropy_jitter = 0.25;
  /// Work items (deltas, snapshots, peer events) queued per instance, and
  /// the wire bytes of the deltas and snapshots among them: an item that
  /// would go over either is dropped and counted (inbox_drops), so a peer
  /// that sends faster than the owner merges costs bounded memory.
  /// Anti-entropy repairs such drops for instances that opt in.
  std::size_t inbox_limit = 100'000;
  std::size_t inbox_limit_bytes = std::size_t{64} << 20;
  /// A receive budget per peer: when the deltas and snapshots queued here
  /// that came from one neighbour pass this many wire bytes, the transport
  /// stops reading that neighbour (transport::hold_reading) until they are
  /// back under half of it. One fast or hostile peer then waits in TCP
  /// instead of filling the inbox and making it drop what others send.
  std::size_t inbox_peer_limit_bytes = std::size_t{16} << 20;
  /// Backpressure: a local write waits while the send queue to one of the
  /// node's eager (tree) peers is fuller than plumtree_config's
  /// write_room_fill, so a burst of puts slows to the tree's pace instead
  /// of turning into announcements and grafts. Lazy peers and slow ones
  /// (the write to them in progress has lasted slow_peer_after) do not hold writes up.
  /// After waiting this long it goes ahead anyway. 0: never waits.
  duration backpressure_max_wait{5'000};
  /// Full sync of a large state: a snapshot whose sync message (CBOR) is larger
  /// than sync_chunk_bytes travels as parts of that size (each one frame,
  /// so keep it well below the transport's max_frame_bytes), reassembled in
  /// order by the receiver.
  std::size_t sync_chunk_bytes = 1024 * 1024;
  /// Largest snapshot sent or reassembled (bytes of CBOR, and decoded
  /// items). A receiver holds at most one partial snapshot per peer and
  /// instance; a peer announcing more is cut off and counted.
  std::size_t max_snapshot_bytes = 64 * 1024 * 1024;
  std::size_t max_snapshot_items = 16 * 1024 * 1024;
  /// The reconciliation's shape (range_sync.hpp); entries a round finds
  /// missing are pushed in snapshots of at most reconcile_batch_items.
  range_sync_config range_sync;
  std::size_t reconcile_batch_items = 4096;
  /// What reconciliation may push to peers, in entries: to one peer, one
  /// whole state (the owner's index, at least reconcile_batch_items) per
  /// window; to all peers together, eight whole states per window. Each is
  /// a bucket that starts full and refills evenly. A member that asks for
  /// everything again and again (an empty opening, long need lists) costs
  /// this much and no more; entries over a budget wait for a later round
  /// (counted in reconcile_push_deferred). A joiner's full sync fits.
  duration reconcile_push_window{60'000};
  /// Reconciliation pushes a batch of entries to a peer only while the
  /// send queue to it (transport::send_queue) is at most this full, of
  /// either limit; the rest wait for a later round (counted in
  /// reconcile_push_congested). A peer that takes its data slowly would
  /// otherwise get the same entries again each round, before it has read
  /// the last copies, until its queue drops parts. A batch whose parts
  /// would take the queue over this fill is cut to the room left; a single
  /// entry that does not fit waits too, unless the queue is empty.
  /// The default is plumtree_config::congested_fill's, so that a queue
  /// that holds broadcast writes back holds repair back too, and no
  /// lower. In (0, 1]; 1: push until the transport drops.
  double reconcile_push_max_fill = 0.75;
  std::uint64_t seed = 0;
  std::function<void(const std::string&)> log;
};

struct replica_counters {
  std::uint64_t deltas_sent = 0;
  std::uint64_t deltas_received = 0;
  std::uint64_t customs_sent = 0;
  std::uint64_t customs_received = 0;
  std::uint64_t syncs_sent = 0;        ///< snapshots pushed to peers
  std::uint64_t syncs_received = 0;
  std::uint64_t pulls_sent = 0;        ///< snapshot requests (late start, anti-entropy, request_sync; owners without sync_items)
  std::uint64_t anti_entropy_rounds = 0;
  std::uint64_t callback_errors = 0;
  std::uint64_t bad_messages = 0;      ///< payloads of unknown shape, ignored
  std::uint64_t inbox_drops = 0;
  std::uint64_t inbox_bytes = 0;       ///< gauge: wire bytes of the work queued now
  std::uint64_t inbox_peer_holds = 0;  ///< times a peer's reading was held: over inbox_peer_limit_bytes
  std::uint64_t backpressure_waits = 0;  ///< local writes that waited for send-queue room
  std::uint64_t sync_parts_sent = 0;     ///< parts of chunked snapshots
  std::uint64_t sync_parts_received = 0;
  std::uint64_t snapshots_too_large = 0; ///< snapshots not sent: over max_snapshot_bytes
  std::uint64_t reconcile_rounds = 0;    ///< reconciliations this node started
  std::uint64_t reconcile_sent = 0;      ///< reconciliation messages sent
  std::uint64_t reconcile_received = 0;  ///< reconciliation messages received
  std::uint64_t reconcile_crossed = 0;   ///< openings dropped: ours, opened at the same time, goes on
  std::uint64_t reconcile_items_sent = 0;  ///< entries pushed because a peer lacked them
  std::uint64_t reconcile_push_deferred = 0;  ///< entries a peer lacked, not pushed: over reconcile_push_window's budget
  std::uint64_t reconcile_push_congested = 0;  ///< entries a peer lacked, not pushed: its send queue was over reconcile_push_max_fill, or still held the last push to it
};

/// A local write: add a value or remove a key.
struct replica_add {
  std::string key;
  json value;
};
struct replica_remove {
  std::string key;
};
using replica_update = std::variant<replica_add, replica_remove>;

/// One per node: routes replica traffic to named instances and owns their
/// shared services (the node's HLC, membership, broadcast).
class replica_host {
 public:
  replica_host(transport& net, hyparview& membership, plumtree& broadcast, scheduler& sched,
               hlc_clock& clock, replica_config config = {});
  ~replica_host();
  replica_host(const replica_host&) = delete;
  replica_host& operator=(const replica_host&) = delete;

  /// Registers the replica channel handler and the membership listener.
  void start();
  /// Stops every instance; returns when their loops have ended.
  task<> stop();

  /// Bytes of chunked snapshots being reassembled, over every peer and
  /// instance. A partial snapshot is freed when its sender leaves the
  /// active view or its connection closes (checked every second, and
  /// before a new one starts). Node's executor.
  [[nodiscard]] std::size_t partial_snapshot_bytes() const;
  /// Openings of exchanges kept for instances not started on this node yet
  /// (at most 8 per peer, 256 in all). Node's executor.
  [[nodiscard]] std::size_t kept_openings() const;

  /// Called by broadcast_update before it stamps a local write; what it
  /// throws reaches the writer and nothing is written. The node installs the
  /// clock-skew guard (clock_monitor::check_writable). Node's executor.
  void set_write_guard(std::function<void()> guard);

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
  friend class replica;
};

class replica {
 public:
  /// Starts instance `name` on this node. `callbacks` must outlive the
  /// instance. Throws std::invalid_argument when the name is empty or
  /// already started on this node.
  static std::shared_ptr<replica> start(replica_host& host, std::string name,
                                        replica_callbacks& callbacks);
  ~replica();

  /// Applies the update locally (merge_delta) and gossips it. An add
  /// carries a fresh dot, a remove a tombstone, both stamped by the node's
  /// HLC. Throws what the host's write guard
  /// throws (clock_skew_error) before anything is stamped. If the local merge_delta throws
  /// (the owner rejects its own write), the exception reaches the caller and
  /// nothing is gossiped.
  task<> broadcast_update(replica_update update);
  /// Applies `payload` locally (merge_custom) and gossips it; as above, a
  /// throwing local merge_custom propagates and nothing is gossiped.
  task<> broadcast_custom(json payload);
  /// The forward path for a local write: gossips `delta` (wire form, see
  /// crdt_wire), which the owner has ALREADY merged into its own state,
  /// typed, with dots stamped by the node's clock (hlc_clock::now). Nothing
  /// calls back into the owner. Encodes the delta once; waits for send-queue
  /// room first, like broadcast_update. Call on the node's executor.
  task<> publish_delta(const json& delta);
  /// The same with the payload already encoded (encode_delta_payload).
  task<> publish_delta(shared_bytes payload);
  /// Syncs with `peer_id` (or, without argument, every active peer): a
  /// range reconciliation when the owner keeps a sync_index, else a request
  /// for the peer's snapshot.
  void request_sync(const std::string& peer_id);
  void request_sync();
  /// Stops the instance (unsubscribes, ends its loops).
  task<> stop();

  [[nodiscard]] const std::string& name() const;
  [[nodiscard]] const replica_counters& counters() const;

  struct impl;

 private:
  explicit replica(std::shared_ptr<impl> i);
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
