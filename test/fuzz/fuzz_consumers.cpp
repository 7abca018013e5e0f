// libFuzzer target: CBOR bytes -> json -> what the registry, placement and
// reminders accept from peers (lib/consumer_wire.hpp), and query requests
// and answers (lib/query_wire.hpp), with the registry's
// entries through crdt_wire::accept as gossip takes them. Any crash,
// sanitizer report or escaping exception is a bug; so is a value accepted
// once and refused when checked again.
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/crdt_wire.hpp>

#include "consumer_wire.hpp"
#include "query_wire.hpp"

#include <cstddef>
#include <cstdint>

using namespace barrel_p2p;
namespace cw = barrel_p2p::detail::consumer_wire;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Query requests and answers: a request that parses encodes and parses
  // back to the same request.
  if (auto r = detail::query_wire::parse_request({data, size})) {
    const auto again = detail::query_wire::parse_request(detail::query_wire::encode(*r));
    if (!again || again->id != r->id || again->name != r->name || again->asker != r->asker ||
        again->nodes != r->nodes || again->tags != r->tags || again->ttl_ms != r->ttl_ms)
      __builtin_trap();
    (void)detail::query_wire::picks(*r, "n1", {});
  }
  if (auto a = detail::query_wire::parse_answer({data, size}); a && !detail::query_wire::parse_answer(detail::query_wire::encode(*a)))
    __builtin_trap();
  static hlc_clock clock([] { return std::uint64_t{1'700'000'000'000}; });
  auto decoded = decode_cbor({data, size});
  if (!decoded) return 0;
  const json& j = *decoded;

  // Registry entries: values pass only with well-formed keys; tombstones
  // are not shown to the leaf check, so the registry splits every key
  // itself (a tombstone under "db\nn2:x" once crashed it). A key that
  // splits joins back to itself.
  const crdt_wire::leaf_validator leaf = [](const std::string& key, const json& v) {
    return cw::split_registry_key(key).has_value() && cw::valid_registration(v);
  };
  const auto accepted = crdt_wire::accept(j, clock, leaf);
  for (const auto& [key, e] : accepted.entries()) {
    const auto k = cw::split_registry_key(key);
    if (k && cw::join_registry_key(k->service, k->node, k->endpoint) != key) __builtin_trap();
    if (const auto* v = std::get_if<value_entry>(&e); v && (!k || !cw::valid_registration(v->payload)))
      __builtin_trap();
  }

  // Custom messages: down notices, queries, fencing marks, announcements.
  if (j.is_object()) {
    for (const auto& [node, packed] : cw::parse_down_notices(j.value("d", json()))) {
      if (!cw::valid_part(node, cw::max_node_bytes)) __builtin_trap();
      (void)hlc_timestamp::unpack(packed).valid();
    }
    if (auto q = cw::parse_query(j.value("q", json())); q && !cw::valid_part(*q, cw::max_service_bytes))
      __builtin_trap();
    for (const std::uint32_t shards : {1u, 64u, 65536u})
      for (const auto& [s, mark] : cw::parse_marks(j.value("f", json()), shards))
        if (s >= shards) __builtin_trap();
    if (auto w = cw::member_weight(j, 64); w && !(*w > 0 && *w <= 1e6)) __builtin_trap();
    // Reminders: each member as a stored reminder under its own name.
    for (const auto& [name, v] : j.items())
      if (cw::valid_reminder(name, v) && !cw::valid_reminder(name, json(v))) __builtin_trap();
  }
  return 0;
}
