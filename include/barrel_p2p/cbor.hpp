// Bounded CBOR codec for everything that crosses the wire.
//
// nlohmann::json::from_cbor recurses once per nesting level and builds a json
// node per item; on hostile input (a frame of 0x81 bytes nests a million
// arrays) that is a stack overflow. decode_cbor parses through a SAX handler
// that stops at a depth and an item budget, so the cost of decoding is bounded
// by the limits, whatever the bytes say.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace barrel_p2p {

struct cbor_limits {
  /// Deepest nesting of arrays and maps accepted. Protocol messages need
  /// about 6 levels; application values get the rest.
  std::size_t max_depth = 64;
  /// Most items (scalars, arrays, maps, keys) in one message. Bounds the
  /// memory a message can expand into (a json node per item).
  std::size_t max_items = 1'000'000;
};

/// Why a decode failed, for the counter and the log line.
struct cbor_error {
  std::string reason;
};

/// Decodes one CBOR data item that must span all of `bytes`. Never throws;
/// returns nullopt and fills `error` (when given) on malformed input, trailing
/// bytes, tags, or a limit exceeded.
[[nodiscard]] std::optional<nlohmann::json> decode_cbor(
    std::span<const std::uint8_t> bytes, const cbor_limits& limits = {},
    cbor_error* error = nullptr) noexcept;

/// Encodes a json value as CBOR.
[[nodiscard]] std::vector<std::uint8_t> encode_cbor(const nlohmann::json& value);

}  // namespace barrel_p2p
