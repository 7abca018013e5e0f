// The replicated key-value map: the everyday API (docs/concepts/replicated-map.md).
//
// A named LWW map on top of the replica driver: `co_await put/remove`, reads
// that never wait, change events for local and remote writes, a validator,
// tombstone expiry, optional pruning of a departed node's keys, and optional
// durability (write-ahead log + snapshot, map_store.hpp).
//
// Concurrency: writes and events run on the node's strand (put, remove,
// close and erase hop onto it, so they may be called from any executor;
// open() and subscribe() do not: call them, and read the stream, there).
// Reads (get, keys, to_list, size, page, counters) take a shared lock over
// the map's state (changes take it exclusively, on the strand, never while
// a validator runs) and may be called from any thread: each key is read
// atomically, but there is no snapshot across calls. A change is in the
// state before its event is published, so a subscriber that reads after an
// event sees the new value.
#pragma once

#include <barrel_p2p/event_stream.hpp>
#include <barrel_p2p/map_store.hpp>
#include <barrel_p2p/node.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace barrel_p2p {

struct map_options {
  /// Checks a value before it is written locally (a rejection throws
  /// map_error from put) or merged from a peer (silently dropped and
  /// counted). Empty: everything is accepted. Must not block.
  std::function<bool(const std::string& key, const json& value)> validator;
  /// Tombstones older than this are swept (a remove is remembered this long
  /// so that a delayed add cannot resurrect the key; keep it far above the
  /// longest partition you expect to heal from).
  duration tombstone_ttl{3'600'000};
  duration tombstone_sweep_interval{60'000};
  /// On peer_down, drop the keys whose winning write was made by that node
  /// (presence-style maps). Local only: nothing is broadcast.
  bool prune_on_peer_down = false;
  /// Keep the map on disk under <node data_dir>/maps/<name>: every put and
  /// remove is fsynced before it is applied, gossiped or returns (by the
  /// store's writer thread, never on the executor; concurrent puts share an
  /// fsync); recovered at open. A write the disk refuses throws
  /// std::system_error and changes nothing, here or on any peer.
  bool persist = false;
  /// Log records between compactions (each folds the log into a new
  /// snapshot, on a background thread); at least as many records as the
  /// map has entries, so that compaction costs a constant per write.
  std::size_t snapshot_every = 10'000;
  /// Tests and the simulator: faults injected into the store's writes
  /// (map_store.hpp). Empty in production.
  disk_fault_hook disk_faults;
};

/// A page of a sorted listing (map::page).
struct map_page {
  std::vector<std::pair<std::string, json>> entries;  ///< sorted by key
  std::size_t size = 0;  ///< live keys in the whole map
  bool more = false;     ///< live keys sort after the last entry
};

/// A change, local or remote.
struct map_event {
  enum class kind { put, remove };
  kind what;
  std::string key;
  json value;  ///< the new value for put; null for remove
};

/// A put refused by the validator, a map used after close, a bad option.
class map_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct map_counters {
  std::uint64_t puts = 0;          ///< local puts
  std::uint64_t removes = 0;       ///< local removes
  std::uint64_t remote_changes = 0;
  std::uint64_t rejected_local = 0;   ///< puts refused by the validator
  std::uint64_t rejected_remote = 0;  ///< peer entries dropped, for any reason (rejected_clock_ahead included)
  /// Of rejected_remote: entries whose timestamp is beyond max_clock_offset
  /// ahead of this node's clock (the writer's clock, or ours, is off).
  std::uint64_t rejected_clock_ahead = 0;
  std::uint64_t tombstones_swept = 0;
  std::uint64_t pruned = 0;        ///< keys dropped by prune_on_peer_down
  /// Local writes refused because the disk failed them (persist only).
  std::uint64_t write_failures = 0;
  /// 1 once the store has stopped taking writes (a failed fsync, or a failed write it could not cut back); read
  /// live from the store.
  std::uint64_t store_failed = 0;
};

class map : public node::attachment, public std::enable_shared_from_this<map> {
 public:
  /// Opens the map `name` on this node: the same object for the same name
  /// while it is open (options of a later call are ignored). With persist,
  /// recovers from disk first. The node keeps the map open until close(),
  /// erase() or node::stop(): a handle dropped at once
  /// (`co_await map::open(n, "m")->put(...)`) loses nothing, and a later
  /// open() returns the same map. Throws map_error on a bad name or
  /// options, std::system_error when the data directory cannot be used.
  /// Node's executor.
  static std::shared_ptr<map> open(node& n, const std::string& name, map_options options = {});
  ~map() override;

  /// Writes `value` under `key` and gossips it. Returns once applied
  /// locally (and, with persist, on disk first). Throws map_error when the
  /// validator refuses the value or the map is closed, std::system_error
  /// when the disk refused it (nothing applied; errno in code(): ENOSPC for
  /// a full disk, EIO once the store has failed for good), and
  /// clock_skew_error (nothing written) while this node's wall clock is
  /// ahead of the cluster by more than max_clock_offset under the refuse
  /// policy (clock_monitor.hpp): the peers would drop the write. Any
  /// executor; from the node's executor it runs inline, without the hop
  /// to the strand and back (more than half the cost of a put alone).
  task<> put(std::string key, json value);
  /// Removes `key` (a tombstone that beats every older write). Throws as put.
  task<> remove(std::string key);

  [[nodiscard]] std::optional<json> get(const std::string& key) const;
  [[nodiscard]] std::vector<std::string> keys() const;  ///< sorted
  [[nodiscard]] std::vector<std::pair<std::string, json>> to_list() const;  ///< sorted by key
  [[nodiscard]] std::size_t size() const;
  /// One page of the live entries in key (byte) order: at most `limit`,
  /// starting after the key `after` when it is given. Copies only the
  /// values it returns: one pass over the keys, O(n log limit), under the
  /// read lock (writers wait that long). Any thread.
  [[nodiscard]] map_page page(std::size_t limit, const std::optional<std::string>& after = std::nullopt) const;

  /// Change events from now on, local and remote. Bounded (drop-oldest, see
  /// event_stream); the map never waits for a subscriber. The stream ends
  /// when the map closes. Node's executor, and read there.
  [[nodiscard]] event_stream<map_event> subscribe(std::size_t capacity = 1024);

  /// Stops the map on this node (others keep it). erase() also deletes its
  /// files (on the calling thread). Both are idempotent. Any executor.
  task<> close();
  task<> erase();

  /// node::stop() closes the map (and flushes it) before the node stops.
  task<> on_node_stop() override;
  /// ~node, for a handle kept past its node: closed, without the network.
  void on_node_destroyed() noexcept override;

  [[nodiscard]] const std::string& name() const;  ///< any thread
  /// False once close(), erase() or node::stop() has closed the map here.
  /// Any thread.
  [[nodiscard]] bool is_open() const;
  [[nodiscard]] map_counters counters() const;  ///< any thread
  /// The counters of the map's replica instance (deltas, syncs, pulls...).
  /// Call on the node's executor.
  [[nodiscard]] replica_counters replica_stats() const;
  /// Entries including tombstones (for tests and metrics). Node's executor.
  [[nodiscard]] std::size_t entry_count() const;

  struct impl;
  explicit map(std::shared_ptr<impl> i);

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
