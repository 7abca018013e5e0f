// Durable storage of one replicated map on one node: a write-ahead log plus
// a snapshot, in the map's own directory (docs/reference/storage.md).
//
// Every record is framed as  u32 length (big-endian) | u32 CRC-32 | CBOR body,
// the CRC covering the length and the body, so that a torn or corrupted tail
// is recognised and cut off at open instead of being loaded. Recovery folds
// the records under the OR-Map's merge rules, so the order they were
// appended in never decides which write wins. The log is a sequence of segments; compaction starts a new
// segment and folds the older ones, with the previous snapshot, into a new
// snapshot (written to a temporary file, fsynced, renamed, directory fsynced)
// that names the first segment it does not cover; then deletes them.
//
// Nothing here blocks the caller's executor. Records go to a writer thread
// owned by the store, which writes everything queued since its last round in
// one write() and one fsync (group commit: concurrent puts share an fsync),
// then resumes the awaiting coroutines on their executor. Compaction runs on
// a second thread, from the files, so puts are acknowledged meanwhile.
//
// A failed write() is cut back: the segment is truncated to its last
// fsynced byte and only that round's writers get the error (a full disk
// refuses writes until space is freed, then takes them again). A failed
// fsync is final: Linux may drop the unwritten pages and report success on
// a later fsync, so the store refuses every later write (fail-stop).
#pragma once

#include <barrel_p2p/ormap.hpp>
#include <barrel_p2p/task.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>

namespace barrel_p2p {

/// CRC-32 (IEEE 802.3 polynomial, as in zlib and PNG).
[[nodiscard]] std::uint32_t crc32(std::span<const std::uint8_t> bytes) noexcept;

struct map_store_stats {
  std::uint64_t records_appended = 0;
  std::uint64_t fsyncs = 0;
  std::uint64_t snapshots_written = 0;   ///< compactions completed
  std::uint64_t records_recovered = 0;
  std::uint64_t torn_tails_dropped = 0;  ///< opens that cut off a bad tail
  std::uint64_t write_errors = 0;        ///< rounds whose write() failed and was cut back
  bool failed = false;                   ///< an fsync (or a cut-back) failed: no more writes
};

/// What a disk_fault_hook is asked about.
enum class disk_op { write, fsync };

/// Fault injection, for tests and the simulator: called on the store's
/// writer thread before each write() and fsync() of the log; returns 0 to
/// let it run, or an errno to fail it with. A write that is failed first
/// writes `bytes` of its data when the hook lowers it (a torn write).
using disk_fault_hook = std::function<int(disk_op op, std::size_t& bytes)>;

/// Where the log is written. The simulator's nodes write inline, so that a
/// seeded run replays exactly (a writer thread would finish its rounds at
/// moments the virtual timeline cannot fix); blocking the executor costs
/// nothing there, as time is virtual.
enum class store_mode {
  writer_thread,  ///< a thread of the store's own: nothing blocks the executor
  inline_writes,  ///< durable() writes and fsyncs what is queued on the caller's thread
};

class map_store {
 public:
  using log_sink = std::function<void(const std::string&)>;

  /// Opens (creating if needed) the store in `dir` and recovers its state:
  /// the snapshot, then every intact record of the segments it does not
  /// cover. A bad record ends its segment: it and the rest of that segment
  /// are cut off (and logged); recovery goes on with the next. Starts
  /// the writer thread; durable() resumes its callers on `completions` (the
  /// node's executor). Throws std::system_error when the directory cannot
  /// be used. Reads the files on the calling thread (once, at open).
  map_store(std::filesystem::path dir, executor completions, log_sink log, disk_fault_hook faults = {},
            store_mode mode = store_mode::writer_thread);
  /// Writes and fsyncs whatever is still queued, then ends the writer
  /// thread and the compactor (a compaction under way stops at its next
  /// segment and is redone at the next open). Blocks for that long: call
  /// flush() first to keep it short.
  ~map_store();
  map_store(const map_store&) = delete;
  map_store& operator=(const map_store&) = delete;

  /// The state recovered at open (as wire-form json entries; the caller
  /// ingests them so that validation and the clock apply as for peer data).
  [[nodiscard]] const json& recovered() const noexcept { return recovered_; }

  /// Queues one changed entry for the log and returns its sequence number
  /// (for durable). Never blocks. Call from one thread at a time (the node's
  /// executor), like compact, durable, flush and check.
  std::uint64_t append(const std::string& key, const entry& e);
  /// Queues the removal of `key`'s value written as `d` (prune-on-peer-down
  /// drops values without a tombstone; this keeps them dropped across a
  /// restart). Never blocks.
  std::uint64_t append_drop(const std::string& key, const dot& d);
  /// Starts a new log segment (in order with the appends) and has the
  /// compactor fold everything before it into the snapshot. Never blocks.
  std::uint64_t compact();
  /// Completes once everything up to `seq` is on disk (written and
  /// fsynced). Throws std::system_error when the round holding `seq`
  /// failed: then the record is not on disk (a failed write() is cut back)
  /// or the store has failed (a failed fsync or cut-back: every later
  /// durable() throws too). Asked after its round completed, it answers
  /// from memory (the 1,024 most recent failed rounds are kept).
  task<> durable(std::uint64_t seq);
  /// durable() of everything queued so far.
  task<> flush();
  /// Throws the failure that stopped the store (std::system_error), if any:
  /// a writer checks before it changes anything.
  void check() const;
  /// Log records appended since the last snapshot.
  [[nodiscard]] std::uint64_t log_records() const noexcept { return log_records_; }
  /// A copy (the writer thread updates them).
  [[nodiscard]] map_store_stats stats() const;
  [[nodiscard]] const std::filesystem::path& dir() const noexcept { return dir_; }

  struct shared;  // the writer's queue and the waiters, shared with the thread

 private:
  void recover();
  std::filesystem::path dir_;
  log_sink log_;
  json recovered_ = json::object();
  std::uint64_t log_records_ = 0;
  std::uint64_t last_seq_ = 0;
  std::uint64_t segment_ = 0;  // the newest segment at open
  map_store_stats recovery_stats_;
  std::shared_ptr<shared> shared_;
  std::thread writer_;
  std::thread compactor_;
};

}  // namespace barrel_p2p
