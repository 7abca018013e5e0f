// Internal (detail/): shared by the library, its tests and fuzzers; not API.
// The messages of the membership layer (channel membership), typed, with
// their encoders and a parser for what a peer sends (docs/reference/wire.md).
//
// Each is a CBOR map with a type "t" (descriptors as {"id","host","port"}),
// written with its keys in sorted order and read in any order:
//   JOIN            {"t":"join", "n":desc}
//   FORWARD_JOIN    {"t":"fwd_join", "n":desc, "ttl":u}
//   NEIGHBOR        {"t":"neighbor", "n":desc, "prio":"high"|"low"}
//   NEIGHBOR_REPLY  {"t":"neighbor_reply", "ok":bool}
//   DISCONNECT      {"t":"disconnect", "leave":bool}        leave may be absent (false)
//   SHUFFLE         {"t":"shuffle", "o":desc, "ttl":u, "l":[desc, ...]}
//   SHUFFLE_REPLY   {"t":"shuffle_reply", "l":[desc, ...]}
#pragma once

#include <barrel_p2p/transport.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace barrel_p2p {

struct join_message {
  peer_descriptor node;
};
struct forward_join_message {
  peer_descriptor node;
  std::uint64_t ttl = 0;
};
struct neighbor_message {
  peer_descriptor node;
  bool high_priority = false;
};
struct neighbor_reply_message {
  bool accepted = false;
};
struct disconnect_message {
  bool leaving = false;  ///< the peer leaves the cluster (not only this link)
};
struct shuffle_message {
  peer_descriptor origin;
  std::uint64_t ttl = 0;
  std::vector<peer_descriptor> nodes;
};
struct shuffle_reply_message {
  std::vector<peer_descriptor> nodes;
};

using membership_message = std::variant<join_message, forward_join_message, neighbor_message,
                                        neighbor_reply_message, disconnect_message, shuffle_message,
                                        shuffle_reply_message>;

[[nodiscard]] message_body encode(const join_message& m);
[[nodiscard]] message_body encode(const forward_join_message& m);
[[nodiscard]] message_body encode(const neighbor_message& m);
[[nodiscard]] message_body encode(const neighbor_reply_message& m);
[[nodiscard]] message_body encode(const disconnect_message& m);
[[nodiscard]] message_body encode(const shuffle_message& m);
[[nodiscard]] message_body encode(const shuffle_reply_message& m);

/// Validating parse of a membership message's bytes; nullopt on any bad
/// shape (not a CBOR map, unknown type, missing or mistyped field, bad
/// descriptor, a list longer than `max_list`, trailing bytes). Keys may come
/// in any order; unknown keys are skipped. Never throws, builds no json.
/// `why` (when given) names what was wrong.
[[nodiscard]] std::optional<membership_message> parse_membership_message(std::span<const std::uint8_t> bytes,
                                                                         std::size_t max_list,
                                                                         std::string* why = nullptr) noexcept;

}  // namespace barrel_p2p
