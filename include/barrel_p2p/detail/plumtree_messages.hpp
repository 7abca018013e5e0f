// Internal (detail/): shared by the library, its tests and fuzzers; not API.
// The messages of the broadcast layer (channel broadcast), typed, with their
// encoders and a parser for bytes from a peer.
//
// Each is a CBOR array whose first item is its kind (docs/reference/wire.md):
//   GOSSIP  [0, origin, seq, tag, round, payload]  payload: a byte string
//   IHAVE   [1, origin, seq, round, origin, seq, round, ...]
//   GRAFT   [2, origin, seq, round]  or  [2]: make the link eager, send nothing
//   PRUNE   [3]  or  [3, origin]: that origin's messages only
// The payload of a GOSSIP is opaque here: encoded once at its origin, it
// travels as a byte string whose bytes every relay forwards unchanged behind
// a new head (only the round changes) and every cache keeps as received.
#pragma once

#include <barrel_p2p/transport.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace barrel_p2p {

/// A broadcast's identity: the node that sent it and its sequence number there.
struct broadcast_id {
  std::string origin;
  std::uint64_t seq = 0;

  broadcast_id() = default;  // not an aggregate: see peer_address
  broadcast_id(std::string o, std::uint64_t s) : origin(std::move(o)), seq(s) {}
  friend bool operator==(const broadcast_id&, const broadcast_id&) = default;
};

struct broadcast_id_hash {
  std::size_t operator()(const broadcast_id& id) const noexcept { return of(id.origin, id.seq); }
  /// The same hash from the parts (for a key that holds its origin elsewhere).
  static std::size_t of(std::string_view origin, std::uint64_t seq) noexcept;
};

/// Longest origin id and tag accepted from a peer.
inline constexpr std::size_t broadcast_max_name_bytes = 255;

struct gossip_message {
  broadcast_id id;
  std::string tag;
  std::uint64_t round = 0;
  byte_slice payload;
};

/// One announced id and the round at which its announcer received it.
struct announcement {
  broadcast_id id;
  std::uint64_t round = 0;
};

struct ihave_message {
  std::vector<announcement> ids;
};

/// Asks the peer to push to this node eagerly from now on and, when `id` is
/// set, to send that message. Without an id it only moves the link into the
/// tree (the optimisation that swaps a long tree path for a shorter one).
struct graft_message {
  std::optional<broadcast_id> id;
  std::uint64_t round = 0;
};

/// Asks the peer to stop pushing whole messages to this node: all of them
/// (the link leaves the tree), or, when `origin` is set, only that origin's
/// (the link leaves that origin's tree; see plumtree_config::
/// origin_prune_after_duplicates). The peer announces them instead.
struct prune_message {
  std::optional<std::string> origin;
};

using broadcast_message = std::variant<gossip_message, ihave_message, graft_message, prune_message>;

/// The head of a GOSSIP; the payload bytes follow it unchanged (the body's
/// tail), so a relay re-encodes a few dozen bytes, never the payload.
[[nodiscard]] message_body encode_gossip(const broadcast_id& id, const std::string& tag, std::uint64_t round,
                                         const byte_slice& payload);
/// The announcements [first, last) of `ids` as one IHAVE.
[[nodiscard]] message_body encode_ihave(const std::vector<announcement>& ids, std::size_t first,
                                        std::size_t last);
[[nodiscard]] message_body encode_graft(const broadcast_id& id, std::uint64_t round);
/// A GRAFT that carries no message id: [2].
[[nodiscard]] message_body encode_graft_link();
[[nodiscard]] message_body encode_prune();
/// A PRUNE for one origin's messages: [3, origin].
[[nodiscard]] message_body encode_origin_prune(const std::string& origin);

/// Validating parse of a broadcast frame body; nullopt on any bad shape
/// (other kind, missing or mistyped item, origin or tag empty or over
/// broadcast_max_name_bytes, trailing bytes). Never throws. A GOSSIP's
/// payload is a slice of `body`: no bytes are copied.
[[nodiscard]] std::optional<broadcast_message> parse_broadcast_message(const byte_slice& body) noexcept;

}  // namespace barrel_p2p
