#include "barrel_p2p/map_store.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/crdt_wire.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <array>
#include <cerrno>
#include <condition_variable>
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

constexpr std::array<std::uint32_t, 256> make_crc_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t n = 0; n < 256; ++n) {
    std::uint32_t c = n;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    table[n] = c;
  }
  return table;
}
constexpr auto crc_table = make_crc_table();

// A record body may be as large as a whole map's snapshot.
constexpr std::uint32_t max_record_bytes = 1u << 30;

[[noreturn]] void fail(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), "map_store: " + what);
}

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
std::uint32_t get_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

// One record around an encoded CBOR body.
std::vector<std::uint8_t> frame_record(const std::vector<std::uint8_t>& cbor) {
  std::vector<std::uint8_t> out;
  out.reserve(cbor.size() + 8);
  put_u32(out, static_cast<std::uint32_t>(cbor.size()));
  put_u32(out, crc32(cbor));
  out.insert(out.end(), cbor.begin(), cbor.end());
  return out;
}

std::vector<std::uint8_t> frame_record(const json& body) { return frame_record(encode_cbor(body)); }

void write_all(int fd, const std::vector<std::uint8_t>& bytes, const char* what) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const auto n = ::write(fd, bytes.data() + done, bytes.size() - done);
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

// Walks the records of `bytes`; returns the offset just past the last good one.
template <class F>
std::size_t for_each_record(const std::vector<std::uint8_t>& bytes, F&& on_record) {
  std::size_t at = 0;
  while (at + 8 <= bytes.size()) {
    const auto len = get_u32(&bytes[at]);
    const auto sum = get_u32(&bytes[at + 4]);
    if (len > max_record_bytes || at + 8 + len > bytes.size()) break;  // torn
    std::span<const std::uint8_t> body(&bytes[at + 8], len);
    if (crc32(body) != sum) break;  // corrupted
    cbor_limits limits;
    limits.max_items = SIZE_MAX;
    auto j = decode_cbor(body, limits);
    if (!j) break;
    on_record(*j);
    at += 8 + len;
  }
  return at;
}

void fsync_dir(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) fail("open directory " + dir.string());
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  // The rename is not durable until the directory is: report it.
  if (rc != 0) fail("fsync directory " + dir.string());
}

// A log record: {"k": key, "e": entry}. Later records for a key replace
// earlier ones (a key's records are appended in the order the merge
// accepted them). False when the record has another shape.
bool apply_log_record(json& state, const json& j) {
  auto k = j.find("k");
  auto e = j.find("e");
  if (k == j.end() || e == j.end() || !k->is_string()) return false;
  state[k->get<std::string>()] = *e;
  return true;
}

// The snapshot file: a header record {"upto": n} (the first log segment it
// does not cover), then the map. A file of one record is the older form:
// the map alone, covering nothing but itself (segment 0 still counts).
// False when a snapshot exists but is damaged (then `state` stays empty).
bool read_snapshot(const std::filesystem::path& dir, json& state, std::uint64_t& covered) {
  const auto path = dir / "snapshot";
  if (!std::filesystem::exists(path)) return true;
  const auto bytes = read_file(path);
  std::vector<json> records;
  const auto good = for_each_record(bytes, [&](const json& j) { records.push_back(j); });
  // A snapshot is renamed into place whole: a bad one is damage, not a tear.
  if (good != bytes.size() || records.empty() || records.size() > 2) return false;
  if (records.size() == 2) {
    const auto upto = records[0].find("upto");
    if (upto == records[0].end() || !upto->is_number_unsigned() || !records[1].is_object()) return false;
    covered = upto->get<std::uint64_t>();
    state = std::move(records[1]);
  } else if (records[0].is_object()) {
    state = std::move(records[0]);
  } else {
    return false;
  }
  return true;
}

}  // namespace

std::uint32_t crc32(std::span<const std::uint8_t> bytes) noexcept {
  std::uint32_t c = 0xffffffffu;
  for (auto b : bytes) c = crc_table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

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

struct map_store::shared : std::enable_shared_from_this<map_store::shared> {
  std::filesystem::path dir;
  executor completions;
  log_sink log;  // called on the executor only (posted there)
  int log_fd = -1;              // the writer thread's segment
  std::uint64_t segment = 0;    // its number

  std::mutex mu;  // guards the fields below it, up to `waiters`
  std::condition_variable wake;          // the writer's
  std::condition_variable wake_compactor;
  std::deque<store_job> queue;
  std::uint64_t compact_below = 0;       // requested: fold segments below this
  bool stopping = false;
  map_store_stats stats;

  // On the completions executor only.
  using waiter = boost::asio::any_completion_handler<void(std::exception_ptr)>;
  std::multimap<std::uint64_t, waiter> waiters;
  std::uint64_t durable_seq = 0;
  std::exception_ptr failure;  // set once: every later durable() throws it

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

  // The writer thread: takes everything queued, writes it with one write()
  // per run of records and one fsync, and reports back on the executor.
  void run_writer() {
    bool failed = false;
    for (;;) {
      std::deque<store_job> batch;
      {
        std::unique_lock lock(mu);
        wake.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) return;  // stopping, and nothing left to write
        batch.swap(queue);
      }
      const auto last = batch.back().seq;
      std::exception_ptr error;
      if (failed) {
        error = std::make_exception_ptr(std::system_error(EIO, std::generic_category(),
                                                          "map_store: an earlier write failed; the store is closed"));
      } else {
        try {
          write(batch);
        } catch (...) {
          failed = true;
          error = std::current_exception();
        }
      }
      boost::asio::post(completions, [self = shared_from_this(), last, error] { self->completed(last, error); });
    }
  }

  void write(const std::deque<store_job>& batch) {
    std::vector<std::uint8_t> records;
    std::uint64_t appended = 0;
    const auto flush_records = [&] {
      if (records.empty()) return;
      write_all(log_fd, records, "append to log");
      if (::fsync(log_fd) != 0) fail("fsync log");
      std::lock_guard lock(mu);
      stats.records_appended += appended;
      ++stats.fsyncs;
      records.clear();
      appended = 0;
    };
    for (const auto& job : batch) {
      if (job.what == store_job::kind::record) {
        records.insert(records.end(), job.bytes.begin(), job.bytes.end());
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
  // earlier ones into the snapshot.
  void rotate() {
    const int fd = open_segment(dir, segment + 1);
    try {
      fsync_dir(dir);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(log_fd);
    log_fd = fd;
    ++segment;
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
    json state = json::object();
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
      if (for_each_record(bytes, [&](const json& j) { apply_log_record(state, j); }) != bytes.size())
        throw std::runtime_error(path.filename().string() + " is damaged; not compacting over it");
    }
    std::vector<std::uint8_t> framed = frame_record({{"upto", below}});
    const auto body = frame_record(state);
    framed.insert(framed.end(), body.begin(), body.end());
    const auto tmp = dir / "snapshot.tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("open " + tmp.string());
    try {
      write_all(fd, framed, "write snapshot");
    } catch (...) {
      ::close(fd);
      throw;
    }
    if (::fsync(fd) != 0) {
      ::close(fd);
      fail("fsync snapshot");
    }
    ::close(fd);
    std::filesystem::rename(tmp, dir / "snapshot");
    fsync_dir(dir);
    // The snapshot says it covers them: deleting them is now only tidying
    // (recovery skips what the snapshot covers).
    for (const auto n : list_segments(dir))
      if (n < below) std::filesystem::remove(segment_path(dir, n));
  }

  // On the executor: everything up to `seq` is durable, or failed.
  void completed(std::uint64_t seq, std::exception_ptr error) {
    if (error && !failure) {
      failure = error;
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& ex) {
        if (log) log("map_store " + dir.string() + ": " + ex.what() + "; the store takes no more writes");
      } catch (...) {
      }
    }
    if (!error) durable_seq = std::max(durable_seq, seq);
    std::vector<waiter> ready;
    for (auto it = waiters.begin(); it != waiters.end() && (failure || it->first <= durable_seq);)
      ready.push_back(std::move(it->second)), it = waiters.erase(it);
    for (auto& h : ready) std::move(h)(failure);
  }
};

map_store::map_store(std::filesystem::path dir, executor completions, log_sink log)
    : dir_(std::move(dir)), log_(std::move(log)), shared_(std::make_shared<shared>()) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) throw std::system_error(ec, "map_store: create " + dir_.string());
  recover();
  shared_->dir = dir_;
  shared_->completions = std::move(completions);
  shared_->log = log_;
  shared_->stats = recovery_stats_;
  // Appends continue in the newest segment (recover cut any torn tail).
  shared_->segment = segment_;
  shared_->log_fd = open_segment(dir_, segment_);
  fsync_dir(dir_);
  writer_ = std::thread([s = shared_.get()] { s->run_writer(); });
  compactor_ = std::thread([s = shared_.get()] { s->run_compactor(); });
}

map_store::~map_store() {
  {
    std::lock_guard lock(shared_->mu);
    shared_->stopping = true;
  }
  shared_->wake.notify_one();
  shared_->wake_compactor.notify_one();
  writer_.join();
  compactor_.join();
  ::close(shared_->log_fd);
}

void map_store::recover() {
  std::uint64_t covered = 0;
  if (!read_snapshot(dir_, recovered_, covered) && log_)
    log_("map_store " + dir_.string() + ": snapshot is damaged; ignoring it");
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
    const auto good = for_each_record(bytes, [&](const json& j) {
      if (apply_log_record(recovered_, j)) {
        ++recovery_stats_.records_recovered;
        ++log_records_;
      }
    });
    if (good != bytes.size()) {
      ++recovery_stats_.torn_tails_dropped;
      if (log_)
        log_("map_store " + dir_.string() + ": dropped a torn or corrupt log tail of " +
             std::to_string(bytes.size() - good) + " bytes in " + path.filename().string());
      std::filesystem::resize_file(path, good);
    }
  }
  segment_ = std::max(covered, segments.empty() ? 0 : segments.back());
}

void map_store::check() const {
  if (shared_->failure) std::rethrow_exception(shared_->failure);
}

std::uint64_t map_store::append(const std::string& key, const entry& e) {
  ++log_records_;
  // {"k": key, "e": entry}, written straight to CBOR: no json copy of the
  // value on the executor for every change.
  cbor_writer w;
  w.map(2).text("k").text(key).text("e");
  crdt_wire::write_entry(w, e);
  shared_->push({store_job::kind::record, frame_record(w.take()), ++last_seq_});
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
  if (seq <= s->durable_seq) co_return;
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
