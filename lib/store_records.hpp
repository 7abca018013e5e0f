// The on-disk record format of a persisted map (docs/reference/storage.md),
// pure and I/O-free so that it can be fuzzed: framing, checksums, and the
// folding of log and snapshot records into an OR-Map. The files, threads
// and fsyncs around it are map_store's.
#pragma once

#include <barrel_p2p/ormap.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace barrel_p2p::detail {

/// A record body may be as large as a whole map's snapshot.
inline constexpr std::uint32_t max_record_bytes = 1u << 30;

/// u32 length (big-endian) | u32 CRC-32 of the length field and the body | body.
[[nodiscard]] std::vector<std::uint8_t> frame_record(std::span<const std::uint8_t> body);

/// A framed log record {"k": key, "e": entry}: the key's merged entry.
[[nodiscard]] std::vector<std::uint8_t> entry_record(const std::string& key, const entry& e);
/// A framed log record {"k": key, "x": [node, hlc]}: the value written as
/// `d` was dropped by prune-on-peer-down.
[[nodiscard]] std::vector<std::uint8_t> drop_record(const std::string& key, const dot& d);
/// The two framed records of a snapshot: {"upto": covered}, then the map.
[[nodiscard]] std::vector<std::uint8_t> snapshot_records(const ormap& state, std::uint64_t covered);

/// Walks the records of `bytes`, calling `on_record(json)` for each intact
/// one; returns the offset just past the last one (a torn, corrupt or
/// undecodable record ends the walk). Never throws on content.
std::size_t walk_records(std::span<const std::uint8_t> bytes, const std::function<void(const json&)>& on_record);

/// Folds one log record into `state` under the merge rules, so the order in
/// which records were appended never decides which write wins. False when
/// the record has another shape (it is skipped).
bool fold_log_record(ormap& state, const json& record) noexcept;

/// Folds a whole log segment; returns the length of its intact prefix.
std::size_t fold_log(std::span<const std::uint8_t> bytes, ormap& state, std::uint64_t* records = nullptr);

/// Parses a snapshot file into `state` and the first segment it does not
/// cover. False when it is damaged (not exactly one or two intact records
/// of the right shape); `state` is then unspecified.
bool parse_snapshot(std::span<const std::uint8_t> bytes, ormap& state, std::uint64_t& covered);

}  // namespace barrel_p2p::detail
