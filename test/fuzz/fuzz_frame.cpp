// libFuzzer target: bytes as a peer sends them -> frame header -> CBOR body
// -> hello validator (and the control hold notice), the path every byte takes before a peer has
// authenticated. Any crash, sanitizer report or escaping exception is a bug;
// so is a broken invariant (__builtin_trap).
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/detail/frame.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

using namespace barrel_p2p;

namespace {

void check_message(const json& j) {
  if (auto hello = parse_hello(j)) {
    // What we accept, we can send back and accept again unchanged.
    auto again = decode_cbor(encode_cbor(make_hello(*hello)));
    if (!again) __builtin_trap();
    auto back = parse_hello(*again);
    if (!back || back->version != hello->version || back->self != hello->self ||
        back->nonce != hello->nonce)
      __builtin_trap();
  }
  // The accepting side's answer may be an id refusal instead: it round-trips.
  if (auto refusal = parse_id_refusal(j)) {
    auto again = parse_id_refusal(make_id_refusal(*refusal));
    if (!again || again->reason != refusal->reason || again->holder != refusal->holder) __builtin_trap();
    if (parse_hello(j)) __builtin_trap();  // never both
  }
  // A control body after the handshake: a hold notice round-trips too.
  if (auto held = parse_hold_notice(j)) {
    auto again = parse_hold_notice(make_hold_notice(*held));
    if (!again || *again != *held) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  const cbor_limits handshake_limits{4, 64};
  const std::size_t limits[] = {handshake_max_frame_bytes, std::size_t{4} * 1024 * 1024};
  for (const auto max : limits) {
    const auto by_length = parse_frame_length(bytes, max);
    const auto parsed = parse_frame_header(bytes, max);
    if (!parsed) continue;
    // A header that passes had a length that passed, fits the limit, and
    // encodes back to the same five bytes.
    if (!by_length || frame_header_size + parsed.header.body_size > max) __builtin_trap();
    const auto again = encode_frame_header(parsed.header.ch, parsed.header.body_size);
    if (!std::equal(again.begin(), again.end(), bytes.begin())) __builtin_trap();
    const auto body = bytes.subspan(frame_header_size,
                                    std::min(parsed.header.body_size, size - frame_header_size));
    if (auto j = decode_cbor(body, handshake_limits)) check_message(*j);
  }
  // The whole input as one message body, with the default limits.
  if (auto j = decode_cbor(bytes)) check_message(*j);
  return 0;
}
