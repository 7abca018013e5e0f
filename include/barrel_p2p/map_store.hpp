// Durable storage of one replicated map on one node: a write-ahead log plus
// a snapshot, in the map's own directory (docs/reference/storage.md).
//
// Every record is framed as  u32 length (big-endian) | u32 CRC-32 | CBOR body
// so that a torn or corrupted tail is recognised and cut off at open instead
// of being loaded. Snapshots are written to a temporary file, fsynced and
// renamed over the old one (then the directory is fsynced), and the log is
// emptied: that is the log's compaction.
#pragma once

#include <barrel_p2p/ormap.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>

namespace barrel_p2p {

/// CRC-32 (IEEE 802.3 polynomial, as in zlib and PNG).
[[nodiscard]] std::uint32_t crc32(std::span<const std::uint8_t> bytes) noexcept;

struct map_store_stats {
  std::uint64_t records_appended = 0;
  std::uint64_t fsyncs = 0;
  std::uint64_t snapshots_written = 0;
  std::uint64_t records_recovered = 0;
  std::uint64_t torn_tails_dropped = 0;  ///< opens that cut off a bad tail
};

class map_store {
 public:
  using log_sink = std::function<void(const std::string&)>;

  /// Opens (creating if needed) the store in `dir` and recovers its state:
  /// the snapshot, then every intact log record after it. A bad record ends
  /// the log: it and everything after it are dropped (and logged).
  /// Throws std::system_error when the directory cannot be used.
  map_store(std::filesystem::path dir, log_sink log);
  ~map_store();
  map_store(const map_store&) = delete;
  map_store& operator=(const map_store&) = delete;

  /// The state recovered at open (as wire-form json entries; the caller
  /// ingests them so that validation and the clock apply as for peer data).
  [[nodiscard]] const json& recovered() const noexcept { return recovered_; }

  /// Appends one changed entry. With `sync`, the record is on disk (fsync)
  /// when this returns.
  void append(const std::string& key, const entry& e, bool sync);
  /// Forces appended records to disk.
  void sync();
  /// Writes `state` as the new snapshot and empties the log.
  void snapshot(const ormap& state);
  /// Log records appended since the last snapshot.
  [[nodiscard]] std::uint64_t log_records() const noexcept { return log_records_; }
  [[nodiscard]] const map_store_stats& stats() const noexcept { return stats_; }
  [[nodiscard]] const std::filesystem::path& dir() const noexcept { return dir_; }

 private:
  void recover();
  std::filesystem::path dir_;
  log_sink log_;
  int log_fd_ = -1;
  json recovered_ = json::object();
  std::uint64_t log_records_ = 0;
  bool dirty_ = false;
  map_store_stats stats_;
};

}  // namespace barrel_p2p
