#include "store_records.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/crdt_wire.hpp"
#include "barrel_p2p/map_store.hpp"

#include <array>

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

std::uint32_t crc32_update(std::uint32_t c, std::span<const std::uint8_t> bytes) noexcept {
  for (auto b : bytes) c = crc_table[(c ^ b) & 0xff] ^ (c >> 8);
  return c;
}

// The record's checksum: CRC-32 of the length field and the body, so a
// damaged length is caught even when it lands on a plausible boundary.
std::uint32_t record_crc(const std::uint8_t* length_field, std::span<const std::uint8_t> body) noexcept {
  return crc32_update(crc32_update(0xffffffffu, {length_field, 4}), body) ^ 0xffffffffu;
}

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
std::uint32_t get_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

// Timestamps on our own disk are checked against the real clock when the
// map loads them; folding only needs their order.
const hlc_clock& any_time() {
  static const hlc_clock clock([] { return std::uint64_t{1} << 44; }, std::chrono::milliseconds(0));
  return clock;
}

}  // namespace

std::uint32_t crc32(std::span<const std::uint8_t> bytes) noexcept {
  return crc32_update(0xffffffffu, bytes) ^ 0xffffffffu;
}

namespace detail {

std::vector<std::uint8_t> frame_record(std::span<const std::uint8_t> body) {
  std::vector<std::uint8_t> out;
  out.reserve(body.size() + 8);
  put_u32(out, static_cast<std::uint32_t>(body.size()));
  put_u32(out, record_crc(out.data(), body));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::vector<std::uint8_t> entry_record(const std::string& key, const entry& e) {
  // Written straight to CBOR: no json copy of the value for every change.
  cbor_writer w;
  w.map(2).text("k").text(key).text("e");
  crdt_wire::write_entry(w, e);
  return frame_record(w.take());
}

std::vector<std::uint8_t> drop_record(const std::string& key, const dot& d) {
  cbor_writer w;
  w.map(2).text("k").text(key).text("x").array(2).text(d.node).array(2).uint(d.hlc.wall_ms).uint(d.hlc.logical);
  return frame_record(w.take());
}

std::vector<std::uint8_t> snapshot_records(const ormap& state, std::uint64_t covered) {
  auto out = frame_record(encode_cbor(json{{"upto", covered}}));
  const auto body = frame_record(encode_cbor(crdt_wire::encode_map(state)));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::size_t walk_records(std::span<const std::uint8_t> bytes, const std::function<void(const json&)>& on_record) {
  std::size_t at = 0;
  while (at + 8 <= bytes.size()) {
    const auto len = get_u32(&bytes[at]);
    const auto sum = get_u32(&bytes[at + 4]);
    if (len > max_record_bytes || len > bytes.size() - at - 8) break;  // torn
    const auto body = bytes.subspan(at + 8, len);
    // Records written before the CRC covered the length: CRC of the body.
    if (record_crc(&bytes[at], body) != sum && crc32(body) != sum) break;  // corrupted
    cbor_limits limits;
    limits.max_items = SIZE_MAX;
    auto j = decode_cbor(body, limits);
    if (!j) break;
    on_record(*j);
    at += 8 + len;
  }
  return at;
}

bool fold_log_record(ormap& state, const json& j) noexcept {
  try {
    if (!j.is_object()) return false;
    auto k = j.find("k");
    if (k == j.end() || !k->is_string()) return false;
    const auto& key = k->get_ref<const std::string&>();
    if (auto e = j.find("e"); e != j.end()) {
      auto decoded = crdt_wire::decode_entry(key, *e, any_time());
      if (!decoded) return false;
      state.merge_entry(key, std::move(*decoded));
      return true;
    }
    if (auto x = j.find("x"); x != j.end()) {
      if (!x->is_array() || x->size() != 2 || !(*x)[0].is_string()) return false;
      auto ts = crdt_wire::decode_hlc((*x)[1], any_time());
      if (!ts) return false;
      state.remove_value_if(key, dot{(*x)[0].get<std::string>(), *ts});
      return true;
    }
    return false;
  } catch (...) {  // out of memory: the record is skipped like a bad one
    return false;
  }
}

std::size_t fold_log(std::span<const std::uint8_t> bytes, ormap& state, std::uint64_t* records) {
  return walk_records(bytes, [&](const json& j) {
    if (fold_log_record(state, j) && records) ++*records;
  });
}

bool parse_snapshot(std::span<const std::uint8_t> bytes, ormap& state, std::uint64_t& covered) {
  std::vector<json> records;
  const auto good = walk_records(bytes, [&](const json& j) { records.push_back(j); });
  // A snapshot is renamed into place whole: a bad one is damage, not a tear.
  if (good != bytes.size() || records.empty() || records.size() > 2) return false;
  const json* map = &records[0];
  if (records.size() == 2) {
    // The older form is the map alone, covering no segment.
    const auto upto = records[0].is_object() ? records[0].find("upto") : records[0].end();
    if (upto == records[0].end() || !upto->is_number_unsigned()) return false;
    covered = upto->get<std::uint64_t>();
    map = &records[1];
  }
  if (!map->is_object()) return false;
  for (const auto& [key, e] : map->items())
    if (auto decoded = crdt_wire::decode_entry(key, e, any_time())) state.merge_entry(key, std::move(*decoded));
  return true;
}

}  // namespace detail
}  // namespace barrel_p2p
