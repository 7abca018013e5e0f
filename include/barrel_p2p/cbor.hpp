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
#include <string_view>
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

/// Writes the few CBOR items fixed-shape protocol messages are made of
/// (arrays, unsigned integers, text and byte strings), in their shortest
/// form, without building a json tree first.
class cbor_writer {
 public:
  cbor_writer& array(std::size_t n) { return head(4, n); }
  /// A map of `n` pairs: write key, value, key, value... after it.
  cbor_writer& map(std::size_t n) { return head(5, n); }
  /// Any json value, as encode_cbor writes it.
  cbor_writer& value(const nlohmann::json& v);
  cbor_writer& uint(std::uint64_t v) { return head(0, v); }
  cbor_writer& boolean(bool v) { return head(7, v ? 21 : 20); }
  cbor_writer& text(std::string_view s);
  cbor_writer& bytes(std::span<const std::uint8_t> b);
  /// Only the head of a byte string of `n` bytes: the caller sends the `n`
  /// bytes after what this writer built (they need not be copied into it).
  cbor_writer& bytes_head(std::size_t n) { return head(2, n); }
  [[nodiscard]] std::vector<std::uint8_t> take() { return std::move(out_); }

 private:
  cbor_writer& head(std::uint8_t major, std::uint64_t value);
  std::vector<std::uint8_t> out_;
};

/// Reads the items cbor_writer writes, one after the other, from bytes a
/// peer sent. Every read returns nullopt on anything else (another type, an
/// indefinite length, a length past the end); the reader is then spent.
/// Never throws, never allocates.
class cbor_reader {
 public:
  explicit cbor_reader(std::span<const std::uint8_t> bytes) noexcept : in_(bytes) {}

  /// A definite-length array: its element count.
  [[nodiscard]] std::optional<std::uint64_t> array() noexcept { return head(4); }
  /// A definite-length map: its number of pairs.
  [[nodiscard]] std::optional<std::uint64_t> map() noexcept { return head(5); }
  /// Any one item, returned as the view of its bytes and skipped: only
  /// what decode_cbor accepts (no tags, maps keyed by text, the simple
  /// values false, true and null, floats) and more narrowly (definite
  /// lengths only, nesting below `max_depth`, at most `items_left` items,
  /// counted down). So decode_cbor decodes whatever this returns, within
  /// the same limits.
  [[nodiscard]] std::optional<std::span<const std::uint8_t>> item(std::size_t max_depth,
                                                                  std::size_t& items_left) noexcept;
  [[nodiscard]] std::optional<std::uint64_t> uint() noexcept { return head(0); }
  /// The simple value false or true: exactly the byte F4 or F5.
  [[nodiscard]] std::optional<bool> boolean() noexcept {
    if (pos_ < in_.size() && (in_[pos_] == 0xf4 || in_[pos_] == 0xf5)) return in_[pos_++] == 0xf5;
    pos_ = in_.size() + 1;
    return std::nullopt;
  }
  /// A text string of at most `max_bytes` bytes (not checked for UTF-8).
  [[nodiscard]] std::optional<std::string_view> text(std::size_t max_bytes) noexcept;
  /// A byte string: a view into the input.
  [[nodiscard]] std::optional<std::span<const std::uint8_t>> bytes() noexcept;
  [[nodiscard]] bool at_end() const noexcept { return pos_ == in_.size(); }
  /// Bytes consumed so far.
  [[nodiscard]] std::size_t offset() const noexcept { return pos_; }

 private:
  std::optional<std::uint64_t> head(std::uint8_t major) noexcept;
  bool skip(std::size_t depth_left, std::size_t& items_left) noexcept;
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
};

}  // namespace barrel_p2p
