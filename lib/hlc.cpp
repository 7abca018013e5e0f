#include "barrel_p2p/hlc.hpp"

#include <algorithm>

namespace barrel_p2p {

std::array<std::uint8_t, hlc_timestamp::binary_size> hlc_timestamp::to_bytes()
    const noexcept {
  std::array<std::uint8_t, binary_size> out{};
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<std::uint8_t>(wall_ms >> (56 - 8 * i));
  for (int i = 0; i < 4; ++i)
    out[8 + i] = static_cast<std::uint8_t>(logical >> (24 - 8 * i));
  return out;
}

std::optional<hlc_timestamp> hlc_timestamp::from_bytes(
    std::span<const std::uint8_t> bytes) noexcept {
  if (bytes.size() != binary_size) return std::nullopt;
  hlc_timestamp ts;
  for (int i = 0; i < 8; ++i) ts.wall_ms = (ts.wall_ms << 8) | bytes[i];
  for (int i = 0; i < 4; ++i) ts.logical = (ts.logical << 8) | bytes[8 + i];
  if (!ts.valid()) return std::nullopt;
  return ts;
}

std::string hlc_timestamp::to_string() const {
  return std::to_string(wall_ms) + "." + std::to_string(logical);
}

std::uint64_t hlc_clock::system_wall_ms() noexcept {
  using namespace std::chrono;
  return static_cast<std::uint64_t>(
      duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count());
}

hlc_clock::hlc_clock(wall_source wall, std::chrono::milliseconds max_offset)
    : wall_(std::move(wall)), max_offset_(max_offset) {
  if (!wall_) throw std::invalid_argument("hlc_clock: empty wall source");
  if (max_offset_.count() < 0)
    throw std::invalid_argument("hlc_clock: negative max offset");
}

// The smallest valid timestamp strictly greater than `floor` and not behind the
// physical clock. This is the whole HLC rule: take the physical time if it is
// ahead, otherwise bump the logical counter (carrying into the wall part so
// that pack() stays exact).
hlc_timestamp hlc_clock::advance_past(const hlc_timestamp& floor,
                                      std::uint64_t physical) {
  if (physical > floor.wall_ms) return {physical, 0};
  if (floor.logical < hlc_timestamp::logical_limit)
    return {floor.wall_ms, floor.logical + 1};
  return {floor.wall_ms + 1, 0};
}

hlc_timestamp hlc_clock::now() {
  last_ = advance_past(last_, wall_());
  return last_;
}

bool hlc_clock::admissible(const hlc_timestamp& remote) const {
  if (!remote.valid()) return false;
  const auto limit = wall_() + static_cast<std::uint64_t>(max_offset_.count());
  return remote.wall_ms <= limit;
}

hlc_timestamp hlc_clock::update(const hlc_timestamp& remote) {
  if (!admissible(remote))
    throw hlc_offset_error("hlc: remote timestamp " + remote.to_string() +
                           " is beyond the maximum forward offset");
  last_ = advance_past(std::max(last_, remote), wall_());
  return last_;
}

}  // namespace barrel_p2p
