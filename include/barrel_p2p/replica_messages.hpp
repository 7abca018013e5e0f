// The messages of the replica layer, typed, with their encoders and parsers
// for bytes from a peer (docs/reference/wire.md).
//
// Broadcast payloads (inside a GOSSIP, tag = instance name), CBOR maps:
//   DELTA   {"k": "d", "d": delta}      delta: an OR-Map in wire form (crdt_wire)
//   CUSTOM  {"k": "c", "p": payload}
// Point to point (channel replica), CBOR maps:
//   SYNC    {"t": "sync", "n": name, "s": snapshot}
//   PART    {"t": "part", "n": name, "id": u64, "i": u64, "of": u64, "b": bytes}
//   PULL    {"t": "pull", "n": name}
// Deltas stay json: they are the owner's data and reach it as json
// (replica_callbacks). A snapshot reaches its owner as its CBOR bytes
// (replica_callbacks::apply_full_sync_cbor), which the map reads without a
// json tree. Each is decoded once per node.
#pragma once

#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/ormap.hpp>
#include <barrel_p2p/range_sync.hpp>
#include <barrel_p2p/transport.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace barrel_p2p {

/// Longest instance name accepted from a peer.
inline constexpr std::size_t replica_max_name_bytes = 255;

// ---- broadcast payloads ------------------------------------------------------

struct replica_delta {
  json delta;
};
struct replica_custom {
  json payload;
};
using replica_payload = std::variant<replica_delta, replica_custom>;

/// The payload bytes of a DELTA / CUSTOM broadcast, encoded once.
[[nodiscard]] shared_bytes encode_delta_payload(const json& delta);
/// The DELTA of one entry, written straight to CBOR (a local write).
[[nodiscard]] shared_bytes encode_delta_payload(const std::string& key, const entry& e);
[[nodiscard]] shared_bytes encode_custom_payload(const json& payload);
/// nullopt unless `bytes` are one CBOR map of either shape. Never throws.
[[nodiscard]] std::optional<replica_payload> parse_replica_payload(std::span<const std::uint8_t> bytes,
                                                                   const cbor_limits& limits = {}) noexcept;

// ---- point to point ----------------------------------------------------------

struct replica_sync {
  std::string name;
  json snapshot;
};
struct replica_part {
  std::string name;
  std::uint64_t id = 0;
  std::uint64_t index = 0;
  std::uint64_t parts = 0;
  std::vector<std::uint8_t> bytes;
};
struct replica_pull {
  std::string name;
};
/// One message of a range reconciliation (range_sync.hpp) of instance `name`.
struct replica_reconcile {
  std::string name;
  range_sync_message message;
};
using replica_message = std::variant<replica_sync, replica_part, replica_pull, replica_reconcile>;

[[nodiscard]] message_body encode(const replica_sync& m);
[[nodiscard]] message_body encode(const replica_part& m);
[[nodiscard]] message_body encode(const replica_pull& m);
[[nodiscard]] message_body encode(const replica_reconcile& m);
/// A SYNC whose snapshot is already CBOR, and a PART of such bytes: the
/// bytes travel as the message's tail, not copied into it.
[[nodiscard]] message_body encode_sync(const std::string& name, byte_slice snapshot_cbor);
[[nodiscard]] message_body encode_part(const std::string& name, std::uint64_t id, std::uint64_t index,
                                       std::uint64_t parts, byte_slice bytes);

/// Where the snapshot of a SYNC lies in its frame body, found without
/// decoding it (a large snapshot is read straight from these bytes).
struct replica_sync_view {
  std::string name;
  std::size_t offset = 0;
  std::size_t length = 0;
};
/// A SYNC in the encoding encode_sync writes (any key order, definite
/// lengths; the snapshot taken by cbor_reader::item within `limits`), else
/// nullopt: parse_replica_message then reads the frame. Never throws.
[[nodiscard]] std::optional<replica_sync_view> parse_sync_view(std::span<const std::uint8_t> body,
                                                               const cbor_limits& limits = {}) noexcept;

/// Why a replica frame was not a message: it is not CBOR at all (the
/// connection is cut), or it decodes but has the wrong shape (dropped).
enum class replica_parse_error { none, not_cbor, bad_shape };

struct parsed_replica_message {
  std::optional<replica_message> message;
  replica_parse_error error = replica_parse_error::none;
  /// The instance name, when the shape got that far (for the counter).
  std::string name;
};

/// Validating parse of a replica frame body. Never throws. A reconcile
/// message is held to `ranges` (the receiver's replica_config::range_sync).
[[nodiscard]] parsed_replica_message parse_replica_message(std::span<const std::uint8_t> body,
                                                           const cbor_limits& limits = {},
                                                           const range_sync_config& ranges = {}) noexcept;

}  // namespace barrel_p2p
