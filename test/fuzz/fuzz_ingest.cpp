// libFuzzer target: CBOR bytes -> ingest, the path every gossip payload and
// snapshot takes, both ways: through a json tree (decode_cbor, ingest) and
// straight from the bytes (ingest_cbor). Any crash, sanitizer report or
// escaping exception is a bug; so is (__builtin_trap):
// - an accepted entry that does not encode and come back unchanged;
// - bytes decode_cbor refuses that ingest_cbor takes;
// - the two ways disagreeing on what ingest_cbor takes.
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/crdt_wire.hpp>

#include <cstddef>
#include <cstdint>

using namespace barrel_p2p;

namespace {

constexpr std::uint64_t now_ms = 1'700'000'000'000;

ormap base(hlc_clock& clock) {
  ormap m;
  m.add("k", 1, "me", clock.now());
  m.remove("gone", clock.now());
  return m;
}

// Compared as bytes: a NaN payload is not equal to itself as json.
std::vector<std::uint8_t> encoded(const ormap& m) { return encode_cbor(crdt_wire::encode_map(m)); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  const crdt_wire::leaf_validator leaf = [](const std::string&, const json& v) {
    return !v.is_string() || v.get_ref<const std::string&>().size() < 64;
  };
  hlc_clock clock_a([] { return now_ms; });
  hlc_clock clock_b([] { return now_ms; });
  ormap via_json = base(clock_a);
  ormap via_bytes = base(clock_b);
  const auto untouched = encoded(via_bytes);
  const auto from_bytes = crdt_wire::ingest_cbor(via_bytes, bytes, clock_b, leaf);
  const auto decoded = decode_cbor(bytes);
  if (!decoded) {
    if (from_bytes) __builtin_trap();  // took what the json way refuses
    return 0;
  }
  const auto from_json = crdt_wire::ingest(via_json, *decoded, clock_a, leaf);

  // Whatever was accepted must encode and be accepted again unchanged.
  const auto accepted = crdt_wire::accept(*decoded, clock_a, leaf);
  const auto first = crdt_wire::encode_map(accepted);
  const auto again = crdt_wire::encode_map(crdt_wire::accept(first, clock_a, leaf));
  if (encode_cbor(first) != encode_cbor(again)) __builtin_trap();

  if (!from_bytes) {
    if (encoded(via_bytes) != untouched) __builtin_trap();  // refused, yet merged something
    return 0;
  }
  // What ingest_cbor takes, both ways agree on.
  if (encoded(via_bytes) != encoded(via_json) || from_bytes->accepted != from_json.accepted ||
      from_bytes->why.total != from_json.why.total || from_bytes->why.clock_ahead != from_json.why.clock_ahead ||
      from_bytes->why.max_ahead_ms != from_json.why.max_ahead_ms || from_bytes->changed.size() != from_json.changed.size() ||
      clock_a.now() != clock_b.now())
    __builtin_trap();
  return 0;
}
