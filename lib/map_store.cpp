#include "barrel_p2p/map_store.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/crdt_wire.hpp"

#include <array>
#include <cerrno>
#include <fcntl.h>
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

std::vector<std::uint8_t> frame_record(const json& body) {
  const auto cbor = encode_cbor(body);
  std::vector<std::uint8_t> out;
  out.reserve(cbor.size() + 8);
  put_u32(out, static_cast<std::uint32_t>(cbor.size()));
  put_u32(out, crc32(cbor));
  out.insert(out.end(), cbor.begin(), cbor.end());
  return out;
}

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

std::vector<std::uint8_t> read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
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
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

std::uint32_t crc32(std::span<const std::uint8_t> bytes) noexcept {
  std::uint32_t c = 0xffffffffu;
  for (auto b : bytes) c = crc_table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

map_store::map_store(std::filesystem::path dir, log_sink log) : dir_(std::move(dir)), log_(std::move(log)) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) throw std::system_error(ec, "map_store: create " + dir_.string());
  recover();
  log_fd_ = ::open((dir_ / "log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd_ < 0) fail("open " + (dir_ / "log").string());
}

map_store::~map_store() {
  if (log_fd_ >= 0) {
    if (dirty_) ::fsync(log_fd_);
    ::close(log_fd_);
  }
}

void map_store::recover() {
  const auto snap_path = dir_ / "snapshot";
  if (std::filesystem::exists(snap_path)) {
    auto bytes = read_file(snap_path);
    const auto good = for_each_record(bytes, [&](const json& j) {
      if (j.is_object()) recovered_ = j;
    });
    // A snapshot is renamed into place whole: a bad one is damage, not a tear.
    if (good != bytes.size() && log_) log_("map_store " + dir_.string() + ": snapshot is damaged; ignoring it");
  }
  const auto log_path = dir_ / "log";
  if (!std::filesystem::exists(log_path)) return;
  auto bytes = read_file(log_path);
  const auto good = for_each_record(bytes, [&](const json& j) {
    auto k = j.find("k");
    auto e = j.find("e");
    if (k == j.end() || e == j.end() || !k->is_string()) return;
    // Later records win only through the merge: keep both, the caller's
    // ingest of the combined map is order-independent. Here the newest
    // record for a key replaces the older one, which is equivalent because
    // a key's records are appended in the order the merge accepted them.
    recovered_[k->get<std::string>()] = *e;
    ++stats_.records_recovered;
    ++log_records_;
  });
  if (good != bytes.size()) {
    ++stats_.torn_tails_dropped;
    if (log_)
      log_("map_store " + dir_.string() + ": dropped a torn or corrupt log tail of " +
           std::to_string(bytes.size() - good) + " bytes");
    std::filesystem::resize_file(log_path, good);
  }
}

void map_store::append(const std::string& key, const entry& e, bool sync_now) {
  write_all(log_fd_, frame_record({{"k", key}, {"e", crdt_wire::encode_entry(e)}}), "append to log");
  ++stats_.records_appended;
  ++log_records_;
  dirty_ = true;
  if (sync_now) sync();
}

void map_store::sync() {
  if (!dirty_) return;
  if (::fsync(log_fd_) != 0) fail("fsync log");
  ++stats_.fsyncs;
  dirty_ = false;
}

void map_store::snapshot(const ormap& state) {
  const auto tmp = dir_ / "snapshot.tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("open " + tmp.string());
  write_all(fd, frame_record(crdt_wire::encode_map(state)), "write snapshot");
  if (::fsync(fd) != 0) {
    ::close(fd);
    fail("fsync snapshot");
  }
  ::close(fd);
  std::filesystem::rename(tmp, dir_ / "snapshot");
  fsync_dir(dir_);
  // Everything in the log is in the snapshot now.
  if (::ftruncate(log_fd_, 0) != 0) fail("truncate log");
  ::fsync(log_fd_);
  dirty_ = false;
  log_records_ = 0;
  ++stats_.snapshots_written;
}

}  // namespace barrel_p2p
