// Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks and
// Consistent Snapshots in Globally Distributed Databases", 2014).
//
// A timestamp is {wall_ms, logical}: the wall part follows the physical clock,
// the logical part orders events that share a millisecond. Timestamps are
// totally ordered and a node never issues the same one twice, which is what
// lets the OR-Map resolve concurrent writes by "greatest dot wins".
#pragma once

#include <array>
#include <chrono>
#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>

namespace barrel_p2p {

/// One HLC reading. Ordered by wall time, then by the logical counter.
struct hlc_timestamp {
  std::uint64_t wall_ms = 0;
  std::uint32_t logical = 0;

  friend constexpr auto operator<=>(const hlc_timestamp&,
                                    const hlc_timestamp&) = default;

  /// The logical counter stays below 2^20: on overflow the clock moves its
  /// wall part forward one millisecond instead. That keeps pack() exact.
  static constexpr std::uint32_t logical_limit = (1u << 20) - 1;
  static constexpr int logical_bits = 20;

  /// One u64 with the same order: `wall_ms << 20 | logical`. The Erlang
  /// original shifts by 32 on bignums; epoch milliseconds need 41 bits, so in
  /// 64 bits the logical part gets 20 (a million events per millisecond) and
  /// the wall part 44 (good until the year 2527). Leaders use it as a fencing
  /// token. Precondition: logical <= logical_limit (valid() holds).
  [[nodiscard]] constexpr std::uint64_t pack() const noexcept {
    return (wall_ms << logical_bits) | logical;
  }
  /// Inverse of pack().
  [[nodiscard]] static constexpr hlc_timestamp unpack(std::uint64_t packed) noexcept {
    return {packed >> logical_bits,
            static_cast<std::uint32_t>(packed & logical_limit)};
  }
  /// True when pack() is exact for this timestamp: logical within its 20 bits
  /// and wall_ms within 44 bits. Wire validation refuses anything else.
  [[nodiscard]] constexpr bool valid() const noexcept {
    return logical <= logical_limit && wall_ms < (std::uint64_t{1} << 44);
  }

  /// 12-byte big-endian form: 8 bytes wall_ms, 4 bytes logical. Byte-wise
  /// comparison of two encodings gives the timestamp order.
  static constexpr std::size_t binary_size = 12;
  [[nodiscard]] std::array<std::uint8_t, binary_size> to_bytes() const noexcept;
  /// Parses the 12-byte form; nullopt when the span is not exactly 12 bytes
  /// or the timestamp is not valid().
  [[nodiscard]] static std::optional<hlc_timestamp> from_bytes(
      std::span<const std::uint8_t> bytes) noexcept;

  /// "wall_ms.logical", for logs.
  [[nodiscard]] std::string to_string() const;
};

/// Thrown by hlc_clock::update when a remote timestamp is too far ahead.
class hlc_offset_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The clock of one node. Not thread-safe: a node keeps it on its strand.
class hlc_clock {
 public:
  /// Milliseconds since the Unix epoch. Injectable so tests and the simulator
  /// control time.
  using wall_source = std::function<std::uint64_t()>;

  /// Default maximum forward offset: a remote timestamp more than this ahead
  /// of our physical clock is refused rather than absorbed, so one peer with a
  /// broken clock cannot drag every clock in the cluster into the future.
  static constexpr std::chrono::milliseconds default_max_offset{60'000};

  /// Reads the system clock.
  static std::uint64_t system_wall_ms() noexcept;

  explicit hlc_clock(wall_source wall = system_wall_ms,
                     std::chrono::milliseconds max_offset = default_max_offset);

  /// A fresh timestamp, strictly greater than every timestamp this clock has
  /// returned or absorbed.
  hlc_timestamp now();

  /// True when `remote` is not beyond the forward offset, i.e. update() would
  /// accept it. Wire validation calls this before anything is absorbed.
  [[nodiscard]] bool admissible(const hlc_timestamp& remote) const;

  /// Absorbs a remote timestamp (message receipt). The result is strictly
  /// greater than both the clock's last value and `remote`; the clock never
  /// moves backwards. Throws hlc_offset_error when !admissible(remote).
  hlc_timestamp update(const hlc_timestamp& remote);

  /// Moves the clock past `own`, a timestamp this node accepted or issued
  /// before a restart (recovered from its own disk), however far ahead of
  /// the physical clock: its later timestamps must never order its new
  /// writes behind its old ones. Never moves backwards.
  void restore(const hlc_timestamp& own) noexcept { last_ = std::max(last_, own); }

  /// The last timestamp issued or absorbed, without advancing.
  [[nodiscard]] hlc_timestamp last() const noexcept { return last_; }

  [[nodiscard]] std::chrono::milliseconds max_offset() const noexcept {
    return max_offset_;
  }

  /// The physical clock reading (the injected source).
  [[nodiscard]] std::uint64_t wall_ms() const { return wall_(); }

 private:
  hlc_timestamp advance_past(const hlc_timestamp& floor, std::uint64_t physical);

  wall_source wall_;
  std::chrono::milliseconds max_offset_;
  hlc_timestamp last_{};
};

}  // namespace barrel_p2p
