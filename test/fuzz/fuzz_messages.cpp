// libFuzzer target: a frame body as a peer sends it, fed to every layer's
// message parser (membership, broadcast, replica, replica broadcast payloads,
// clock probes). Any
// crash, sanitizer report or escaping exception is a bug; so is a message
// that is accepted but does not survive encode -> parse unchanged
// (__builtin_trap).
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/detail/clock_messages.hpp>
#include <barrel_p2p/detail/hyparview_messages.hpp>
#include <barrel_p2p/detail/plumtree_messages.hpp>
#include <barrel_p2p/replica_messages.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

using namespace barrel_p2p;

namespace {

bool same(const std::span<const std::uint8_t> a, const std::span<const std::uint8_t> b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

void check_broadcast(const byte_slice& body) {
  auto m = parse_broadcast_message(body);
  if (!m) return;
  message_body again;
  if (auto* g = std::get_if<gossip_message>(&*m)) {
    // The payload is a slice of the input, and the bytes are forwarded as they are.
    if (g->payload.size() > body.size()) __builtin_trap();
    again = encode_gossip(g->id, g->tag, g->round, g->payload);
  } else if (auto* i = std::get_if<ihave_message>(&*m)) {
    again = encode_ihave(i->ids, 0, i->ids.size());
  } else if (auto* gr = std::get_if<graft_message>(&*m)) {
    again = gr->id ? encode_graft(*gr->id, gr->round) : encode_graft_link();
  } else {
    const auto& pr = std::get<prune_message>(*m);
    again = pr.origin ? encode_origin_prune(*pr.origin) : encode_prune();
  }
  // Canonical input (shortest-form heads) comes back byte for byte; any
  // accepted input parses again to the same message.
  const auto bytes = share_bytes(again.to_bytes());
  auto back = parse_broadcast_message(byte_slice(bytes));
  if (!back || back->index() != m->index()) __builtin_trap();
  if (auto* g = std::get_if<gossip_message>(&*back)) {
    const auto& first = std::get<gossip_message>(*m);
    if (!(g->id == first.id) || g->tag != first.tag || g->round != first.round ||
        !same(g->payload.bytes(), first.payload.bytes()))
      __builtin_trap();
  }
  if (auto* pr = std::get_if<prune_message>(&*back); pr && pr->origin != std::get<prune_message>(*m).origin)
    __builtin_trap();
}

void check_replica(std::span<const std::uint8_t> bytes) {
  auto parsed = parse_replica_message(bytes);
  // A SYNC found without decoding it is the SYNC the full parse finds,
  // with the same name and a snapshot that decodes to the same tree.
  if (auto view = parse_sync_view(bytes)) {
    auto* sync = parsed.message ? std::get_if<replica_sync>(&*parsed.message) : nullptr;
    if (!sync || sync->name != view->name) __builtin_trap();
    auto snapshot = decode_cbor(bytes.subspan(view->offset, view->length));
    if (!snapshot || encode_cbor(*snapshot) != encode_cbor(sync->snapshot)) __builtin_trap();
  }
  if (parsed.message) {
    const auto body = std::visit([](const auto& m) { return encode(m); }, *parsed.message).to_bytes();
    auto back = parse_replica_message(body);
    if (!back.message || back.message->index() != parsed.message->index() || back.name != parsed.name)
      __builtin_trap();
  }
  if (auto p = parse_replica_payload(bytes)) {
    const auto again = std::holds_alternative<replica_delta>(*p)
                           ? encode_delta_payload(std::get<replica_delta>(*p).delta)
                           : encode_custom_payload(std::get<replica_custom>(*p).payload);
    if (!parse_replica_payload(again.bytes())) __builtin_trap();
  }
}

void check_membership(std::span<const std::uint8_t> bytes) {
  auto m = parse_membership_message(bytes, 64);
  // What parses is CBOR that decode_cbor reads too.
  if (m && !decode_cbor(bytes)) __builtin_trap();
  if (!m) return;
  const auto body = std::visit([](const auto& x) { return encode(x); }, *m).to_bytes();
  // The encoder writes what the json form wrote, and reads back the same.
  auto tree = decode_cbor(body);
  if (!tree || encode_cbor(*tree) != body) __builtin_trap();
  auto back = parse_membership_message(body, 64);
  if (!back || back->index() != m->index()) __builtin_trap();
  const auto again = std::visit([](const auto& x) { return encode(x); }, *back).to_bytes();
  if (again != body) __builtin_trap();
}

void check_clock(std::span<const std::uint8_t> bytes) {
  auto m = parse_clock_message(bytes);
  if (!m) return;
  const auto body = std::visit([](const auto& x) { return encode(x); }, *m).to_bytes();
  auto back = parse_clock_message(body);
  if (!back || back->index() != m->index()) __builtin_trap();
  if (auto* a = std::get_if<clock_answer>(&*back)) {
    const auto& first = std::get<clock_answer>(*m);
    if (a->sent_ms != first.sent_ms || a->wall_ms != first.wall_ms) __builtin_trap();
  } else if (std::get<clock_probe>(*back).sent_ms != std::get<clock_probe>(*m).sent_ms) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto bytes = share_bytes(std::vector<std::uint8_t>(data, data + size));
  check_broadcast(byte_slice(bytes));
  check_replica(bytes.bytes());
  check_membership(bytes.bytes());
  check_clock(bytes.bytes());
  return 0;
}
