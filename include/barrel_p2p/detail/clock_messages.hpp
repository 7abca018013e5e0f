// Internal (detail/): shared by the library, its tests and fuzzers; not API.
// The messages of the clock channel: a probe and its answer, from which a node
// estimates how far a peer's wall clock is from its own (clock_monitor.hpp).
//
// Each is a CBOR array whose first item is its kind (docs/reference/wire.md):
//   PROBE  [0, sent]          sent: the prober's monotonic time, ms (opaque to the peer)
//   ANSWER [1, sent, wall]    sent: echoed; wall: the answerer's wall clock, ms since the epoch
#pragma once

#include <barrel_p2p/transport.hpp>

#include <cstdint>
#include <optional>
#include <variant>

namespace barrel_p2p {

struct clock_probe {
  std::uint64_t sent_ms = 0;
};

struct clock_answer {
  std::uint64_t sent_ms = 0;  ///< the probe's, echoed
  std::uint64_t wall_ms = 0;  ///< the answerer's wall clock when it answered
};

using clock_message = std::variant<clock_probe, clock_answer>;

[[nodiscard]] message_body encode(const clock_probe& m);
[[nodiscard]] message_body encode(const clock_answer& m);

/// Validating parse of a clock frame body; nullopt on any bad shape (other
/// kind, missing or mistyped item, a wall time beyond what an HLC can hold,
/// trailing bytes). Never throws.
[[nodiscard]] std::optional<clock_message> parse_clock_message(std::span<const std::uint8_t> body) noexcept;

}  // namespace barrel_p2p
