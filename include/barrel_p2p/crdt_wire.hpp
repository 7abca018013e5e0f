// The safe gossip-ingest surface: the json wire form of OR-Map entries, and
// validation of anything a peer sends before it touches a map or a clock.
//
// Wire form (docs/reference/wire.md):
//   hlc       [wall_ms, logical]                      two unsigned integers
//   value     {"v": payload, "d": [[node, hlc], ...]} a non-empty dot set
//   tombstone {"t": hlc}
//   map       {key: entry, ...}
//
// Every function here takes ANY json (a peer may send an array, a string,
// null, huge numbers, deep nesting) and never throws on its content: invalid
// entries are dropped one by one, the rest are kept.
#pragma once

#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/hlc.hpp>
#include <barrel_p2p/ormap.hpp>

#include <functional>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

namespace barrel_p2p::crdt_wire {

/// Application check of a value (the "leaf"): false or an exception rejects
/// that entry alone. Tombstones carry no value and are not passed to it.
using leaf_validator = std::function<bool(const std::string& key, const json& value)>;

/// Bounds on the wrapper, so a peer cannot make one entry expensive.
struct limits {
  std::size_t max_key_bytes = 1024;
  std::size_t max_node_id_bytes = 255;
  /// Most dots accepted in one entry's dot set (only the greatest is kept).
  std::size_t max_dots = 64;
};

[[nodiscard]] json encode_hlc(const hlc_timestamp& ts);
[[nodiscard]] json encode_entry(const entry& e);
[[nodiscard]] json encode_map(const ormap& m);
/// The wire form of the entries behind `items` that are still current in
/// `m` (which tracks its sync items), or nullopt when none is: what a
/// replica owner answers in snapshot_of.
[[nodiscard]] std::optional<json> encode_items(const ormap& m, const std::vector<sync_item>& items);
/// The same wire form as encode_entry, written as CBOR straight into `w`
/// (no json tree in between: the local write path).
void write_entry(cbor_writer& w, const entry& e);
/// encode_items written as CBOR straight into bytes (the snapshots of range
/// reconciliation), or nullopt when no entry behind `items` is current.
/// Decodes to the json encode_items returns.
[[nodiscard]] std::optional<std::vector<std::uint8_t>> write_items(const ormap& m,
                                                                   const std::vector<sync_item>& items);

/// Parses an HLC; nullopt unless it is a valid timestamp the clock admits
/// (within the maximum forward offset).
[[nodiscard]] std::optional<hlc_timestamp> decode_hlc(const json& j,
                                                      const hlc_clock& clock) noexcept;

/// Validates and converts one entry; nullopt when the wrapper is malformed or
/// the leaf rejects the value. The dot set is reduced to its greatest dot.
[[nodiscard]] std::optional<entry> decode_entry(const std::string& key, const json& j,
                                                const hlc_clock& clock,
                                                const leaf_validator& leaf = {},
                                                const limits& lim = {}) noexcept;

/// True when decode_entry would accept `j`.
[[nodiscard]] bool valid_entry(const std::string& key, const json& j,
                               const hlc_clock& clock, const leaf_validator& leaf = {},
                               const limits& lim = {}) noexcept;

/// The valid entries of `payload` as a map; a non-object payload gives an
/// empty map. `rejected`, when given, receives how many entries were dropped.
[[nodiscard]] ormap accept(const json& payload, const hlc_clock& clock,
                           const leaf_validator& leaf = {}, std::size_t* rejected = nullptr,
                           const limits& lim = {}) noexcept;

/// Why entries were dropped, for counters and log lines.
struct rejections {
  std::size_t total = 0;
  /// Of total: entries that were well formed but carried a timestamp beyond
  /// the clock's maximum forward offset (a clock ahead, ours or the writer's).
  std::size_t clock_ahead = 0;
  /// The farthest such timestamp's lead over this node's wall clock, ms.
  std::uint64_t max_ahead_ms = 0;
  /// The node of one such entry's dot (empty for a tombstone): who wrote it.
  std::string ahead_writer;
};

/// accept, with the reasons for what was dropped.
[[nodiscard]] ormap accept(const json& payload, const hlc_clock& clock, const leaf_validator& leaf,
                           rejections& why, const limits& lim = {}) noexcept;

struct ingest_result {
  /// How many entries of the input were valid and merged (whether or not
  /// they changed the local map). Only these advanced the clock.
  std::size_t accepted = 0;
  /// Keys whose local entry changed: emit events for exactly these.
  std::vector<std::string> changed;
  /// Positions in `changed` where a tombstone replaced a value: the changes
  /// a reader sees as removals (a tombstone over a tombstone, or over
  /// nothing, changes no live value).
  std::vector<std::size_t> removed_values;
  /// Entries dropped as invalid (why.total), and why.
  rejections why;
};

/// accept + absorb_clock + merge in one step. `local` is left unchanged by
/// anything invalid; nothing thrown reaches the caller from peer content.
/// With `merge_lock`, it is held exclusively while `local` changes and not
/// while `leaf` runs: readers on other threads take it shared, and a leaf
/// may read what the lock guards.
ingest_result ingest(ormap& local, const json& incoming, hlc_clock& clock,
                     const leaf_validator& leaf = {}, const limits& lim = {},
                     std::shared_mutex* merge_lock = nullptr);

/// ingest, read straight from the CBOR of a map in wire form (a snapshot as
/// it arrives) without building its json tree: only each value is decoded,
/// alone. Takes definite-length encodings naming each key once (what
/// cbor_writer and nlohmann write); nullopt for anything else, or bytes
/// decode_cbor would refuse within `cbor` (then `local` is unchanged:
/// decode and ingest the json instead). Otherwise the same result as
/// ingest(decode_cbor(bytes)).
std::optional<ingest_result> ingest_cbor(ormap& local, std::span<const std::uint8_t> bytes, hlc_clock& clock,
                                         const leaf_validator& leaf = {}, const limits& lim = {},
                                         const cbor_limits& cbor = {}, std::shared_mutex* merge_lock = nullptr);

}  // namespace barrel_p2p::crdt_wire
