#include "barrel_p2p/map_store.hpp"

#include "barrel_p2p/crdt_wire.hpp"
#include "store_records.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <fcntl.h>
#include <sys/resource.h>
#include <fstream>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace barrel_p2p {

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), "map_store: " + what);
}

void write_all(int fd, const std::uint8_t* bytes, std::size_t size, const char* what) {
  std::size_t done = 0;
  while (done < size) {
    const auto n = ::write(fd, bytes + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(what);
    }
    done += static_cast<std::size_t>(n);
  }
}

// The whole file; throws std::system_error when it cannot be read (an I/O
// error is not an empty file).
std::vector<std::uint8_t> read_file(const std::filesystem::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("open " + p.string());
  std::vector<std::uint8_t> out;
  std::uint8_t chunk[64 * 1024];
  for (;;) {
    const auto n = ::read(fd, chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int saved = errno;
      ::close(fd);
      errno = saved;
      fail("read " + p.string());
    }
    if (n == 0) break;
    out.insert(out.end(), chunk, chunk + n);
  }
  ::close(fd);
  return out;
}

// 0, or -1 with errno set.
int fsync_dir_noexcept(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  return rc;
}

void fsync_dir(const std::filesystem::path& dir) {
  // A new or renamed file is not durable until its directory is: report it.
  if (fsync_dir_noexcept(dir) != 0) fail("fsync directory " + dir.string());
}

// The snapshot file: a header record {"upto": n} (the first log segment it
// does not cover), then the map. A file of one record is the older form:
// the map alone, covering nothing but itself (segment 0 still counts).
// False when a snapshot exists but is damaged (then `state` stays empty).
bool read_snapshot(const std::filesystem::path& dir, ormap& state, std::uint64_t& covered) {
  const auto path = dir / "snapshot";
  if (!std::filesystem::exists(path)) return true;
  return detail::parse_snapshot(read_file(path), state, covered);
}

}  // namespace

// Log segments: "log" is segment 0, then "log.1", "log.2"... Records go to
// the newest; a compaction starts a new one and folds the older ones into
// the snapshot, which names the first segment it does not cover.
std::filesystem::path segment_path(const std::filesystem::path& dir, std::uint64_t n) {
  return n == 0 ? dir / "log" : dir / ("log." + std::to_string(n));
}

// The segment numbers present in `dir`, ascending.
std::vector<std::uint64_t> list_segments(const std::filesystem::path& dir) {
  std::vector<std::uint64_t> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name == "log") {
      out.push_back(0);
    } else if (name.rfind("log.", 0) == 0 && name.size() > 4 && name.size() < 24 &&
               std::all_of(name.begin() + 4, name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      out.push_back(std::stoull(name.substr(4)));
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

int open_segment(const std::filesystem::path& dir, std::uint64_t n) {
  const auto path = segment_path(dir, n);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) fail("open " + path.string());
  return fd;
}

// What the writer thread works through, in order.
struct store_job {
  enum class kind { record, rotate } what;
  std::vector<std::uint8_t> bytes;  // a framed record
  std::uint64_t seq = 0;
};

// A write() that failed and was cut back: that round's records are not on
// disk, and the store goes on (a later round may find room again).
struct write_cut_back : std::system_error {
  using std::system_error::system_error;
};

struct map_store::shared : std::enable_shared_from_this<map_store::shared> {
  std::filesystem::path dir;
  executor completions;
  log_sink log;  // called on the executor only (posted there)
  disk_fault_hook faults;  // called on the writer thread
  int log_fd = -1;              // the writer thread's segment
  std::uint64_t segment = 0;    // its number
  std::uint64_t synced_size = 0;  // its bytes known to be on disk (writer thread)

  std::mutex mu;  // guards the fields below it, up to `waiters`
  std::condition_variable wake;          // the writer's
  std::condition_variable wake_compactor;
  std::deque<store_job> queue;
  std::uint64_t compact_below = 0;       // requested: fold segments below this
  bool stopping = false;
  bool inline_writes = false;   // store_mode::inline_writes: no writer thread
  bool writer_failed = false;   // the writer's (thread or inline caller)
  map_store_stats stats;

  // On the completions executor only.
  using waiter = boost::asio::any_completion_handler<void(std::exception_ptr)>;
  std::multimap<std::uint64_t, waiter> waiters;
  std::uint64_t reported_seq = 0;  // every seq up to here is durable or failed
  std::exception_ptr failure;      // set once: every later durable() throws it
  // The rounds refused by a failed write (cut back): last seq -> (first
  // seq, error), the most recent max_failed_rounds, for a durable() that
  // asks after its round was reported.
  static constexpr std::size_t max_failed_rounds = 1024;
  std::map<std::uint64_t, std::pair<std::uint64_t, std::exception_ptr>> failed_rounds;

  // The outcome of a reported seq: null when durable.
  std::uint64_t forgotten_upto = 0;  // failed rounds up to here were dropped from failed_rounds
  std::exception_ptr outcome(std::uint64_t seq) const {
    if (failure) return failure;
    const auto it = failed_rounds.lower_bound(seq);
    if (it != failed_rounds.end() && it->second.first <= seq) return it->second.second;
    if (seq <= forgotten_upto)
      return std::make_exception_ptr(std::system_error(
          EIO, std::generic_category(), "map_store: the outcome of this write is no longer known"));
    return nullptr;
  }

  void push(store_job job) {
    {
      std::lock_guard lock(mu);
      queue.push_back(std::move(job));
    }
    wake.notify_one();
  }

  void post_log(std::string line) {
    boost::asio::post(completions, [self = shared_from_this(), line = std::move(line)] {
      if (self->log) self->log(line);
    });
  }

  void post_completed(std::uint64_t seq, std::exception_ptr error, bool final) {
    boost::asio::post(completions,
                      [self = shared_from_this(), seq, error, final] { self->completed(seq, error, final); });
  }

  // The writer thread: takes everything queued, writes it with one write()
  // per run of records and one fsync, and reports back on the executor.
  void run_writer() {
    for (;;) {
      std::deque<store_job> batch;
      {
        std::unique_lock lock(mu);
        wake.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) return;  // stopping, and nothing left to write
        batch.swap(queue);
      }
      write_round(batch);
    }
  }

  // Inline mode: the round the writer thread would run, on the caller's
  // thread, for everything queued now.
  void write_queued() {
    std::deque<store_job> batch;
    {
      std::lock_guard lock(mu);
      batch.swap(queue);
    }
    if (!batch.empty()) write_round(batch);
  }

  // One round: write and fsync `batch`, report the outcome on the executor.
  void write_round(std::deque<store_job>& batch) {
    const auto last = batch.back().seq;
    if (writer_failed) {
      post_completed(last,
                     std::make_exception_ptr(std::system_error(
                         EIO, std::generic_category(), "map_store: the store takes no more writes since an earlier failure")),
                     true);
      return;
    }
    try {
      write(batch);
      post_completed(last, nullptr, false);
    } catch (const write_cut_back&) {
      std::lock_guard lock(mu);
      ++stats.write_errors;
      post_completed(last, std::current_exception(), false);
    } catch (...) {
      writer_failed = true;
      std::lock_guard lock(mu);
      stats.failed = true;
      post_completed(last, std::current_exception(), true);
    }
  }

  // Writes and fsyncs one run of records. A failed write() is cut back to
  // the last fsynced byte (write_cut_back); a failed fsync, or a cut-back
  // that fails, is final (std::system_error).
  void write_records(const std::vector<std::uint8_t>& records) {
    std::size_t allowed = records.size();
    const int injected = faults ? faults(disk_op::write, allowed) : 0;
    try {
      write_all(log_fd, records.data(), injected ? std::min(allowed, records.size()) : records.size(),
                "append to log");
      if (injected != 0) {
        errno = injected;
        fail("append to log");
      }
    } catch (const std::system_error& e) {
      // Whatever part of the round reached the file is unacknowledged:
      // remove it, so that later records follow the last good one.
      if (!cut_back())
        throw std::system_error(e.code(), std::string("map_store: append to log, and the cut-back after it failed (") +
                                              std::strerror(errno) + ")");
      throw write_cut_back(e.code(), "map_store: append to log (cut back)");
    }
    std::size_t none = 0;
    int fsync_errno = faults ? faults(disk_op::fsync, none) : 0;
    if (fsync_errno == 0 && ::fsync(log_fd) != 0) fsync_errno = errno;
    if (fsync_errno != 0) {
      // Final either way (the page cache can no longer be trusted), but the
      // round was refused: try to take it out of the file, so a restart does
      // not bring back writes the callers were told had failed.
      const bool removed = cut_back();
      throw std::system_error(fsync_errno, std::generic_category(),
                              removed ? "map_store: fsync log"
                                      : "map_store: fsync log (the refused records may remain in the log)");
    }
    synced_size += records.size();
  }

  // Made durable, so a crash before the next round cannot bring back
  // records of the refused one.
  bool cut_back() { return ::ftruncate(log_fd, static_cast<off_t>(synced_size)) == 0 && ::fsync(log_fd) == 0; }

  void write(const std::deque<store_job>& batch) {
    std::vector<std::uint8_t> records;
    std::uint64_t appended = 0;
    std::uint64_t run_last = 0;
    const auto flush_records = [&] {
      if (records.empty()) return;
      write_records(records);
      {
        // Counted before the waiters hear of it: a caller that resumes
        // from durable() sees its fsync in stats().
        std::lock_guard lock(mu);
        stats.records_appended += appended;
        ++stats.fsyncs;
      }
      // Records of this run are durable even if a later run fails.
      post_completed(run_last, nullptr, false);
      records.clear();
      appended = 0;
    };
    for (const auto& job : batch) {
      if (job.what == store_job::kind::record) {
        records.insert(records.end(), job.bytes.begin(), job.bytes.end());
        run_last = job.seq;
        ++appended;
      } else {
        flush_records();
        rotate();
      }
    }
    flush_records();
  }

  // Starts the next segment (its directory entry made durable before any
  // record in it is acknowledged) and asks the compactor to fold the
  // earlier ones into the snapshot. A failure is logged and costs only the
  // compaction: records keep going to the current segment.
  void rotate() {
    const int fd = ::open(segment_path(dir, segment + 1).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || fsync_dir_noexcept(dir) != 0) {
      const int saved = errno;
      if (fd >= 0) ::close(fd);
      post_log("map_store " + dir.string() + ": could not start a new log segment (" +
               std::generic_category().message(saved) + "); compaction waits for the next request");
      return;
    }
    ::close(log_fd);
    log_fd = fd;
    ++segment;
    synced_size = 0;
    {
      std::lock_guard lock(mu);
      compact_below = segment;
    }
    wake_compactor.notify_one();
  }

  // The compactor thread: snapshot + segments below `compact_below` become
  // the new snapshot; then those segments are deleted. Off the executor and
  // off the writer: puts keep being acknowledged meanwhile. A failure is
  // logged and retried at the next rotation; no data depends on it.
  void run_compactor() {
    // Background work: the scheduler prefers the node's own threads.
    ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
    std::uint64_t done = 0;
    for (;;) {
      std::uint64_t below = 0;
      {
        std::unique_lock lock(mu);
        wake_compactor.wait(lock, [&] { return stopping || compact_below > done; });
        if (compact_below <= done) return;  // stopping
        below = compact_below;
      }
      try {
        compact(below);
        done = below;
        std::lock_guard lock(mu);
        ++stats.snapshots_written;
      } catch (const std::exception& ex) {
        if (std::lock_guard lock(mu); stopping) return;
        post_log(std::string("map_store ") + dir.string() + ": compaction failed: " + ex.what() +
                 "; the log is kept and compaction retried later");
        std::unique_lock lock(mu);
        if (compact_below == below && !stopping) wake_compactor.wait(lock, [&] { return stopping || compact_below > below; });
        if (stopping) return;
      }
    }
  }

  // Folds only what it can read whole: a damaged snapshot or segment stops
  // the compaction (the files stay as they are, for an operator to look
  // at), it is never folded as if it were empty.
  void compact(std::uint64_t below) {
    ormap state;
    std::uint64_t covered = 0;
    if (!read_snapshot(dir, state, covered))
      throw std::runtime_error("the snapshot is damaged; not compacting over it");
    for (const auto n : list_segments(dir)) {
      if (n < covered || n >= below) continue;
      {
        std::lock_guard lock(mu);
        if (stopping) throw std::runtime_error("closing");  // the next open compacts again
      }
      const auto path = segment_path(dir, n);
      const auto bytes = read_file(path);
      // Only the newest segment can have a torn tail, and it is never
      // compacted: a bad record here is damage.
      if (detail::fold_log(bytes, state) != bytes.size())
        throw std::runtime_error(path.filename().string() + " is damaged; not compacting over it");
    }
    const auto framed = detail::snapshot_records(state, below);
    const auto tmp = dir / "snapshot.tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("open " + tmp.string());
    try {
      write_all(fd, framed.data(), framed.size(), "write snapshot");
      if (::fsync(fd) != 0) fail("fsync snapshot");
      ::close(fd);
      std::filesystem::rename(tmp, dir / "snapshot");
    } catch (...) {
      // A half-written snapshot can be as large as the map: on a full disk
      // it must not stay and keep the space the log needs.
      ::close(fd);
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw;
    }
    fsync_dir(dir);
    // The snapshot says it covers them: deleting them is now only tidying
    // (recovery skips what the snapshot covers).
    for (const auto n : list_segments(dir))
      if (n < below) std::filesystem::remove(segment_path(dir, n));
  }

  // On the executor: every seq up to `seq` not reported yet is durable,
  // or failed (then `final` says whether the store is closed for good).
  void completed(std::uint64_t seq, std::exception_ptr error, bool final) {
    if (seq <= reported_seq && !error) return;
    if (error) {
      std::string what = "unknown error";
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& ex) {
        what = ex.what();
      } catch (...) {
      }
      if (final && !failure) {
        // This round's writers get the error itself; every later write an
        // EIO that names it (a full disk is not why it is refused then).
        failure = std::make_exception_ptr(std::system_error(
            EIO, std::generic_category(), "map_store: the store takes no more writes since: " + what));
        if (log) log("map_store " + dir.string() + ": " + what + "; the store takes no more writes");
      } else if (!final) {
        failed_rounds.emplace(seq, std::make_pair(reported_seq + 1, error));
        if (failed_rounds.size() > max_failed_rounds) {
          forgotten_upto = failed_rounds.begin()->first;
          failed_rounds.erase(failed_rounds.begin());
        }
        if (log) log("map_store " + dir.string() + ": " + what + "; the log was cut back and those writes refused");
      }
    }
    reported_seq = std::max(reported_seq, seq);
    std::vector<std::pair<waiter, std::exception_ptr>> ready;
    for (auto it = waiters.begin(); it != waiters.end() && (failure || it->first <= reported_seq);
         it = waiters.erase(it))
      ready.emplace_back(std::move(it->second), error && it->first <= seq ? error : outcome(it->first));
    for (auto& [h, e] : ready) std::move(h)(e);
  }
};

map_store::map_store(std::filesystem::path dir, executor completions, log_sink log, disk_fault_hook faults,
                     store_mode mode)
    : dir_(std::move(dir)), log_(std::move(log)), shared_(std::make_shared<shared>()) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) throw std::system_error(ec, "map_store: create " + dir_.string());
  recover();
  shared_->dir = dir_;
  shared_->completions = std::move(completions);
  shared_->log = log_;
  shared_->faults = std::move(faults);
  shared_->stats = recovery_stats_;
  // Appends continue in the newest segment (recover cut any torn tail).
  shared_->segment = segment_;
  shared_->log_fd = open_segment(dir_, segment_);
  const auto size = ::lseek(shared_->log_fd, 0, SEEK_END);
  if (size < 0) fail("seek " + segment_path(dir_, segment_).string());
  shared_->synced_size = static_cast<std::uint64_t>(size);
  fsync_dir(dir_);
  shared_->inline_writes = mode == store_mode::inline_writes;
  if (!shared_->inline_writes) writer_ = std::thread([s = shared_.get()] { s->run_writer(); });
  compactor_ = std::thread([s = shared_.get()] { s->run_compactor(); });
}

map_store::~map_store() {
  {
    std::lock_guard lock(shared_->mu);
    shared_->stopping = true;
  }
  shared_->wake.notify_one();
  shared_->wake_compactor.notify_one();
  if (shared_->inline_writes) shared_->write_queued();
  else writer_.join();
  compactor_.join();
  ::close(shared_->log_fd);
  // A durable() still waiting resumes when the outcomes just posted run.
  // Should the executor be destroyed without running them, its frame would
  // keep the shared state alive, and the state the frame (in `waiters`),
  // for good: this drain, destroyed unrun with them, lets the frames go.
  struct unrun_drain {
    std::shared_ptr<shared> state;
    bool ran = false;
    unrun_drain(std::shared_ptr<shared> s) : state(std::move(s)) {}
    unrun_drain(const unrun_drain&) = delete;
    unrun_drain& operator=(const unrun_drain&) = delete;
    ~unrun_drain() {
      if (ran) return;
      auto orphans = std::move(state->waiters);  // destroyed here, not in `state`
      state->waiters.clear();
    }
  };
  boost::asio::post(shared_->completions, [drain = std::make_shared<unrun_drain>(shared_)] { drain->ran = true; });
}

void map_store::recover() {
  std::uint64_t covered = 0;
  ormap state;
  if (!read_snapshot(dir_, state, covered)) {
    state = ormap{};
    if (log_) log_("map_store " + dir_.string() + ": snapshot is damaged; ignoring it");
  }
  const auto segments = list_segments(dir_);
  for (const auto n : segments) {
    if (n < covered) {
      // Folded into the snapshot by a compaction that stopped before
      // deleting it.
      std::filesystem::remove(segment_path(dir_, n));
      continue;
    }
    const auto path = segment_path(dir_, n);
    auto bytes = read_file(path);
    std::uint64_t records = 0;
    const auto good = detail::fold_log(bytes, state, &records);
    recovery_stats_.records_recovered += records;
    log_records_ += records;
    if (good != bytes.size()) {
      ++recovery_stats_.torn_tails_dropped;
      if (log_)
        log_("map_store " + dir_.string() + ": dropped a torn or corrupt log tail of " +
             std::to_string(bytes.size() - good) + " bytes in " + path.filename().string());
      std::filesystem::resize_file(path, good);
    }
  }
  segment_ = std::max(covered, segments.empty() ? 0 : segments.back());
  recovered_ = crdt_wire::encode_map(state);
}

void map_store::check() const {
  if (shared_->failure) std::rethrow_exception(shared_->failure);
}

std::uint64_t map_store::append(const std::string& key, const entry& e) {
  ++log_records_;
  shared_->push({store_job::kind::record, detail::entry_record(key, e), ++last_seq_});
  return last_seq_;
}

std::uint64_t map_store::append_drop(const std::string& key, const dot& d) {
  ++log_records_;
  shared_->push({store_job::kind::record, detail::drop_record(key, d), ++last_seq_});
  return last_seq_;
}

std::uint64_t map_store::compact() {
  log_records_ = 0;
  shared_->push({store_job::kind::rotate, {}, ++last_seq_});
  return last_seq_;
}

task<> map_store::durable(std::uint64_t seq) {
  auto s = shared_;
  if (s->failure) std::rethrow_exception(s->failure);
  if (s->inline_writes && seq > s->reported_seq) s->write_queued();  // its outcome is posted, as the thread's is
  if (seq <= s->reported_seq) {
    if (auto e = s->outcome(seq)) std::rethrow_exception(e);
    co_return;
  }
  // Named, and holding a plain pointer (`s` keeps the state alive): GCC 12
  // destroys a temporary in a co_await expression twice, which would
  // release a captured shared_ptr once too often.
  auto* state = s.get();
  const auto wait = [state, seq](auto handler) { state->waiters.emplace(seq, std::move(handler)); };
  // An exception_ptr completion: use_awaitable rethrows it here.
  co_await boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void(std::exception_ptr)>(
      wait, boost::asio::use_awaitable);
}

task<> map_store::flush() { co_await durable(last_seq_); }

map_store_stats map_store::stats() const {
  std::lock_guard lock(shared_->mu);
  return shared_->stats;
}

}  // namespace barrel_p2p
