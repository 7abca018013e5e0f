// Last-write-wins OR-Map: the state every replica converges on.
//
// Pure data, no I/O. Each key holds either a value {payload, dot} or a
// tombstone {hlc}. A dot names one write: the node that made it and the HLC
// it made it at. Merge keeps, per key, the entry that wins:
//   * value vs value:     the greater dot (HLC, then node id) wins;
//   * tombstone vs value: the tombstone wins only if its HLC is strictly
//                          greater than the value's; on a tie the value wins;
//   * tombstone vs tombstone: the greater HLC.
// These rules are a total order on entries, so merge is "take the maximum":
// commutative, associative and idempotent, and replicas that see the same
// writes in any order, with duplicates, end equal.
//
// Why one dot and not a growing dot set: the specification's entry carries a
// dot set, but merge only ever reads its greatest dot. A smaller dot can never
// win again (any later comparison is against the maximum), so keeping it buys
// nothing and costs memory that grows with every write to the key. We keep the
// winning dot; the wire form still carries a set, and ingest reduces it to its
// maximum. See docs/concepts/or-map.md.
#pragma once

#include <barrel_p2p/hlc.hpp>
#include <barrel_p2p/keyed_hash.hpp>
#include <barrel_p2p/sync_index.hpp>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace barrel_p2p {

using json = nlohmann::json;

/// One write: who made it and when. Ordered by HLC, then by node id, so two
/// nodes writing with the same HLC still resolve the same way everywhere.
struct dot {
  std::string node;
  hlc_timestamp hlc;

  friend bool operator==(const dot&, const dot&) = default;
  friend std::strong_ordering operator<=>(const dot& a, const dot& b) {
    if (auto c = a.hlc <=> b.hlc; c != 0) return c;
    return a.node.compare(b.node) <=> 0;
  }
};

/// A live value and the write that produced it.
struct value_entry {
  json payload;
  barrel_p2p::dot dot;
  friend bool operator==(const value_entry&, const value_entry&) = default;
};

/// A removal, remembered so that an older add arriving late cannot resurrect
/// the key. Collected by gc_tombstones once older than the map's TTL.
struct tombstone {
  hlc_timestamp hlc;
  friend bool operator==(const tombstone&, const tombstone&) = default;
};

using entry = std::variant<value_entry, tombstone>;

/// The HLC that decides an entry's fate: the dot's for a value.
[[nodiscard]] const hlc_timestamp& entry_hlc(const entry& e) noexcept;
/// True when `incoming` would replace `current` under the merge rules.
[[nodiscard]] bool entry_wins(const entry& incoming, const entry& current);

class ormap {
 public:
  /// Keys come from peers: hashed with a secret per-process key, so no
  /// peer can choose keys that pile up in one bucket (keyed_hash.hpp).
  using container = std::unordered_map<std::string, entry, keyed_string_hash>;

  ormap() = default;
  ormap(const ormap&) = default;
  ormap& operator=(const ormap&) = default;
  /// A moved-from map is empty (its live count too).
  ormap(ormap&& other) noexcept
      : entries_(std::move(other.entries_)), live_(std::exchange(other.live_, 0)), tracking_(std::move(other.tracking_)) {
    other.entries_.clear();
  }
  ormap& operator=(ormap&& other) noexcept {
    entries_ = std::move(other.entries_);
    live_ = std::exchange(other.live_, 0);
    tracking_ = std::move(other.tracking_);
    other.entries_.clear();
    return *this;
  }

  /// Local write: records `payload` under `key` with the dot {node, hlc} and
  /// returns the delta to broadcast (a one-key map). The caller passes a
  /// fresh HLC from its clock, so the local write wins locally.
  ormap add(const std::string& key, json payload, const std::string& node,
            const hlc_timestamp& hlc);

  /// Local removal: a tombstone at `hlc`. Returns the delta to broadcast.
  ormap remove(const std::string& key, const hlc_timestamp& hlc);

  /// The live value of `key`, or nullopt when absent or removed.
  [[nodiscard]] std::optional<json> get(const std::string& key) const;
  /// The raw entry (value or tombstone), or nullptr.
  [[nodiscard]] const entry* get_entry(const std::string& key) const;

  /// Live keys, sorted.
  [[nodiscard]] std::vector<std::string> keys() const;
  /// Live key/value pairs, sorted by key.
  [[nodiscard]] std::vector<std::pair<std::string, json>> to_list() const;
  /// True when no key holds a live value (tombstones do not count).
  [[nodiscard]] bool is_empty() const;
  /// Number of live values (kept as entries change: O(1)).
  [[nodiscard]] std::size_t live_size() const noexcept { return live_; }
  /// Number of entries, tombstones included.
  [[nodiscard]] std::size_t entry_count() const noexcept { return entries_.size(); }

  /// What merging one entry did.
  struct merge_result {
    bool changed = false;        ///< the local entry changed
    bool removed_value = false;  ///< ... from a value to a tombstone: a removal readers see
    explicit operator bool() const noexcept { return changed; }
  };
  /// Merges one entry; true (changed) when the local entry changed.
  merge_result merge_entry(const std::string& key, const entry& incoming);
  merge_result merge_entry(const std::string& key, entry&& incoming);
  /// Merges another map. Returns the keys whose entry changed, in the order
  /// met, so a caller can emit events for exactly those.
  std::vector<std::string> merge(const ormap& other);

  /// Advances `clock` past every HLC in this map, so the next local write
  /// beats everything merged so far. Entries must be admissible (ingest
  /// guarantees it); throws hlc_offset_error otherwise.
  void absorb_clock(hlc_clock& clock) const;

  /// Drops tombstones whose HLC wall time is older than `cutoff_wall_ms`.
  /// Values are never touched. Returns how many were dropped.
  std::size_t gc_tombstones(std::uint64_t cutoff_wall_ms);
  /// The keys gc_tombstones(cutoff_wall_ms) would drop; changes nothing.
  [[nodiscard]] std::vector<std::string> expired_tombstones(std::uint64_t cutoff_wall_ms) const;
  /// Drops `key`'s entry if it is a tombstone older than `cutoff_wall_ms`.
  bool gc_tombstone(const std::string& key, std::uint64_t cutoff_wall_ms);
  // (The pairs above let an owner find its garbage without a lock and hold
  // its readers' lock only while dropping it.)

  /// Direct access for iteration (snapshot, wire encoding).
  [[nodiscard]] const container& entries() const noexcept { return entries_; }

  /// Removes every entry whose winning write was made by `node` (values
  /// only), returning their keys and dots. Backs prune-on-peer-down.
  std::vector<std::pair<std::string, barrel_p2p::dot>> remove_values_by(const std::string& node);
  /// What remove_values_by(node) would remove; changes nothing.
  [[nodiscard]] std::vector<std::pair<std::string, barrel_p2p::dot>> values_by(const std::string& node) const;
  /// Removes `key`'s value if its winning write is `d` (and nothing newer
  /// replaced it): replays one prune-on-peer-down removal from a log.
  bool remove_value_if(const std::string& key, const barrel_p2p::dot& d);

  /// Range reconciliation (range_sync.hpp): from now on keep every entry's
  /// item (sync_item_of) in an index, built from the current entries now.
  /// A copy of the map does not track (deltas and snapshots need not), and
  /// a map assigned a copy of another stops tracking.
  void track_sync_items();
  /// The index, or nullptr when not tracking.
  [[nodiscard]] const sync_index* sync_items() const noexcept { return tracking_.t ? &tracking_.t->index : nullptr; }
  /// The key whose current entry is `item`, or nullptr (not tracking, or
  /// the entry changed since).
  [[nodiscard]] const std::string* key_of(const sync_item& item) const;
  /// The same, with its entry: the (key, entry) pair, or nullptr.
  [[nodiscard]] const container::value_type* current_of(const sync_item& item) const;

  /// Equal entries (tracking is not compared).
  friend bool operator==(const ormap& a, const ormap& b) { return a.entries_ == b.entries_; }

 private:
  struct tracking {
    // Each item's ref is the key in entries_ whose current entry it is.
    sync_index index;
    // Keys whose current entry is an item another key already holds in the
    // index (a hash collision, which a member can make for its own writes):
    // one takes over the item when that key's entry changes.
    std::multimap<sync_item, const std::string*> collisions;
  };
  // Not copied with the map: a copy is a delta or a snapshot.
  struct tracking_slot {
    std::unique_ptr<tracking> t;
    tracking_slot() = default;
    tracking_slot(const tracking_slot&) {}
    tracking_slot(tracking_slot&&) noexcept = default;
    tracking_slot& operator=(const tracking_slot&) {
      t.reset();  // its key pointers would be into the old entries
      return *this;
    }
    tracking_slot& operator=(tracking_slot&&) noexcept = default;
  };
  // `key` is the container's own string (its address is kept).
  void untrack(const std::string& key, const entry& e);
  void track(const std::string& key, const entry& e);
  template <class E>
  merge_result merge_one(const std::string& key, E&& incoming);
  // An entry came in or went out: the live count, then the index.
  void entered(const std::string& key, const entry& e);
  void left(const std::string& key, const entry& e);

  container entries_;
  std::size_t live_ = 0;  // entries holding a value
  tracking_slot tracking_;
};

/// An entry's item for range reconciliation: its write's or tombstone's
/// packed HLC, and the key hashed with the writer (none for a tombstone).
[[nodiscard]] sync_item sync_item_of(const std::string& key, const entry& e);

}  // namespace barrel_p2p
