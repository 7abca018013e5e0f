#include "barrel_p2p/detail/clock_messages.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/hlc.hpp"

namespace barrel_p2p {
namespace {

enum kind : std::uint8_t { probe = 0, answer = 1 };

}  // namespace

message_body encode(const clock_probe& m) {
  cbor_writer w;
  w.array(2).uint(probe).uint(m.sent_ms);
  return message_body(share_bytes(w.take()));
}

message_body encode(const clock_answer& m) {
  cbor_writer w;
  w.array(3).uint(answer).uint(m.sent_ms).uint(m.wall_ms);
  return message_body(share_bytes(w.take()));
}

std::optional<clock_message> parse_clock_message(std::span<const std::uint8_t> body) noexcept {
  cbor_reader r(body);
  auto items = r.array();
  auto k = r.uint();
  if (!items || !k) return std::nullopt;
  if (*k == probe && *items == 2) {
    auto sent = r.uint();
    if (!sent || !r.at_end()) return std::nullopt;
    return clock_probe{*sent};
  }
  if (*k == answer && *items == 3) {
    auto sent = r.uint();
    auto wall = r.uint();
    // A wall time an HLC could not carry is no clock reading.
    if (!sent || !wall || !r.at_end() || !hlc_timestamp{*wall, 0}.valid()) return std::nullopt;
    return clock_answer{*sent, *wall};
  }
  return std::nullopt;
}

}  // namespace barrel_p2p
