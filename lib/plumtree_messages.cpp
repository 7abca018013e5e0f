#include "barrel_p2p/detail/plumtree_messages.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/keyed_hash.hpp"

namespace barrel_p2p {
namespace {

enum kind : std::uint8_t { gossip = 0, ihave = 1, graft = 2, prune = 3 };

std::optional<broadcast_id> read_id(cbor_reader& r) {
  auto origin = r.text(broadcast_max_name_bytes);
  auto seq = r.uint();
  if (!origin || origin->empty() || !seq) return std::nullopt;
  return broadcast_id(std::string(*origin), *seq);
}

std::optional<broadcast_message> parse(const byte_slice& body) {
  cbor_reader r(body.bytes());
  auto items = r.array();
  auto k = r.uint();
  if (!items || *items == 0 || !k) return std::nullopt;
  switch (*k) {
    case gossip: {
      if (*items != 6) return std::nullopt;
      auto id = read_id(r);
      auto tag = r.text(broadcast_max_name_bytes);
      auto round = r.uint();
      auto payload = r.bytes();
      if (!id || !tag || tag->empty() || !round || !payload || !r.at_end()) return std::nullopt;
      return gossip_message{std::move(*id), std::string(*tag), *round, byte_slice(body).drop_front(r.offset() - payload->size())};
    }
    case ihave: {
      if ((*items - 1) % 3 != 0 || *items == 1) return std::nullopt;
      ihave_message m;
      for (std::uint64_t i = 1; i < *items; i += 3) {
        auto id = read_id(r);
        auto round = r.uint();
        if (!id || !round) return std::nullopt;
        m.ids.push_back({std::move(*id), *round});
      }
      if (!r.at_end()) return std::nullopt;
      return m;
    }
    case graft: {
      if (*items == 1) return r.at_end() ? std::optional<broadcast_message>(graft_message{}) : std::nullopt;
      if (*items != 4) return std::nullopt;
      auto id = read_id(r);
      auto round = r.uint();
      if (!id || !round || !r.at_end()) return std::nullopt;
      return graft_message{std::move(*id), *round};
    }
    case prune: {
      if (*items == 1) return r.at_end() ? std::optional<broadcast_message>(prune_message{}) : std::nullopt;
      if (*items != 2) return std::nullopt;
      auto origin = r.text(broadcast_max_name_bytes);
      if (!origin || origin->empty() || !r.at_end()) return std::nullopt;
      return prune_message{std::string(*origin)};
    }
    default:
      return std::nullopt;
  }
}

}  // namespace

// Origin and seq both come from peers: both go through the keyed hash (the
// origin's hash keys the hash of the seq's 8 bytes), so no peer can choose
// ids that pile up in one bucket of the cache or the missing table.
std::size_t broadcast_id_hash::of(std::string_view origin, std::uint64_t seq) noexcept {
  const auto& key = process_hash_key();
  return static_cast<std::size_t>(siphash24({key[0] ^ siphash24(key, origin), key[1]}, seq));
}

message_body encode_gossip(const broadcast_id& id, const std::string& tag, std::uint64_t round,
                           const byte_slice& payload) {
  cbor_writer w;
  w.array(6).uint(gossip).text(id.origin).uint(id.seq).text(tag).uint(round).bytes_head(payload.size());
  return message_body(share_bytes(w.take()), payload);
}

message_body encode_ihave(const std::vector<announcement>& ids, std::size_t first, std::size_t last) {
  cbor_writer w;
  w.array(1 + 3 * (last - first)).uint(ihave);
  for (std::size_t i = first; i < last; ++i) w.text(ids[i].id.origin).uint(ids[i].id.seq).uint(ids[i].round);
  return message_body(share_bytes(w.take()));
}

message_body encode_graft(const broadcast_id& id, std::uint64_t round) {
  cbor_writer w;
  w.array(4).uint(graft).text(id.origin).uint(id.seq).uint(round);
  return message_body(share_bytes(w.take()));
}

// GRAFT [2] and PRUNE [3]: one item, the kind; encoded once.
static message_body kind_only(kind k) {
  cbor_writer w;
  w.array(1).uint(k);
  return message_body(share_bytes(w.take()));
}

message_body encode_graft_link() {
  static const message_body body = kind_only(graft);
  return body;
}

message_body encode_prune() {
  static const message_body body = kind_only(prune);
  return body;
}

message_body encode_origin_prune(const std::string& origin) {
  cbor_writer w;
  w.array(2).uint(prune).text(origin);
  return message_body(share_bytes(w.take()));
}

std::optional<broadcast_message> parse_broadcast_message(const byte_slice& body) noexcept {
  try {
    return parse(body);
  } catch (...) {  // allocation failure copying an id
    return std::nullopt;
  }
}

}  // namespace barrel_p2p
