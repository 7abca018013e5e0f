// libFuzzer target: CBOR bytes -> json -> ingest, the path every gossip
// payload takes. Any crash, sanitizer report or escaping exception is a bug.
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/crdt_wire.hpp>

#include <cstddef>
#include <cstdint>

using namespace barrel_p2p;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static hlc_clock clock([] { return std::uint64_t{1'700'000'000'000}; });
  auto decoded = decode_cbor({data, size});
  if (!decoded) return 0;
  ormap local;
  local.add("k", 1, "me", clock.now());
  local.remove("gone", clock.now());
  crdt_wire::leaf_validator leaf = [](const std::string&, const json& v) {
    return !v.is_string() || v.get_ref<const std::string&>().size() < 64;
  };
  auto r = crdt_wire::ingest(local, *decoded, clock, leaf);
  // Whatever was accepted must encode and be accepted again unchanged
  // (compared as bytes: a NaN payload is not equal to itself as json).
  const auto first = crdt_wire::encode_map(r.accepted);
  const auto again = crdt_wire::encode_map(crdt_wire::accept(first, clock, leaf));
  if (encode_cbor(first) != encode_cbor(again)) __builtin_trap();
  return 0;
}
