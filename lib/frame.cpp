#include "barrel_p2p/detail/frame.hpp"

#include "barrel_p2p/cbor.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace barrel_p2p {

std::string_view to_string(frame_error e) noexcept {
  switch (e) {
    case frame_error::none: return "none";
    case frame_error::truncated: return "truncated header";
    case frame_error::zero_length: return "zero length";
    case frame_error::empty_body: return "empty body";
    case frame_error::oversized: return "oversized";
    case frame_error::unknown_channel: return "unknown channel";
  }
  return "unknown";
}

frame_header_bytes encode_frame_header(channel ch, std::size_t body_size) noexcept {
  const auto length = static_cast<std::uint32_t>(body_size + 1);
  return {static_cast<std::uint8_t>(length >> 24), static_cast<std::uint8_t>(length >> 16),
          static_cast<std::uint8_t>(length >> 8), static_cast<std::uint8_t>(length),
          static_cast<std::uint8_t>(ch)};
}

parsed_frame_header parse_frame_length(std::span<const std::uint8_t> bytes,
                                       std::size_t max_frame_bytes) noexcept {
  parsed_frame_header out;
  if (bytes.size() < 4) {
    out.error = frame_error::truncated;
    return out;
  }
  out.length = static_cast<std::uint32_t>(bytes[0]) << 24 |
               static_cast<std::uint32_t>(bytes[1]) << 16 |
               static_cast<std::uint32_t>(bytes[2]) << 8 | static_cast<std::uint32_t>(bytes[3]);
  if (out.length == 0) out.error = frame_error::zero_length;
  else if (std::size_t{4} + out.length > max_frame_bytes) out.error = frame_error::oversized;
  return out;
}

parsed_frame_header parse_frame_header(std::span<const std::uint8_t> bytes,
                                       std::size_t max_frame_bytes) noexcept {
  auto out = parse_frame_length(bytes, max_frame_bytes);
  if (!out) return out;
  if (bytes.size() < frame_header_size) {
    out.error = frame_error::truncated;
    return out;
  }
  const std::uint8_t ch = bytes[4];
  if (ch >= channel_count) {
    out.error = frame_error::unknown_channel;
  } else if (out.length == 1) {
    out.error = frame_error::empty_body;
  } else {
    out.header = {static_cast<channel>(ch), std::size_t{out.length} - 1};
  }
  return out;
}

std::vector<std::uint8_t> encode_frame(channel ch, std::span<const std::uint8_t> body) {
  const auto header = encode_frame_header(ch, body.size());
  std::vector<std::uint8_t> out(header.size() + body.size());
  std::copy(header.begin(), header.end(), out.begin());
  std::copy(body.begin(), body.end(), out.begin() + static_cast<std::ptrdiff_t>(header.size()));
  return out;
}

// ---------------------------------------------------------------- handshake

namespace {

template <std::size_t N>
json to_binary(const std::array<std::uint8_t, N>& bytes) {
  return json::binary(std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
}

template <std::size_t N>
std::optional<std::array<std::uint8_t, N>> from_binary(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_binary()) return std::nullopt;
  const auto& bin = it->get_binary();
  if (bin.size() != N) return std::nullopt;
  std::array<std::uint8_t, N> out{};
  std::copy(bin.begin(), bin.end(), out.begin());
  return out;
}

}  // namespace

json make_hello(const hello_message& hello) {
  return {{"v", hello.version},
          {"id", hello.self.id},
          {"host", hello.self.address.host},
          {"port", hello.self.address.port},
          {"nonce", to_binary(hello.nonce)}};
}

std::optional<hello_message> parse_hello(const json& j) noexcept {
  try {
    if (!j.is_object()) return std::nullopt;
    auto v = j.find("v");
    // CBOR decodes non-negative integers as unsigned; json built in memory
    // may hold them as signed.
    if (v == j.end() || !v->is_number_integer()) return std::nullopt;
    if (v->is_number_integer() && !v->is_number_unsigned() && v->get<std::int64_t>() < 0)
      return std::nullopt;
    const auto version = v->get<std::uint64_t>();
    if (version > std::numeric_limits<std::uint32_t>::max()) return std::nullopt;
    auto self = descriptor_from_json(j);
    if (!self) return std::nullopt;
    auto nonce = from_binary<handshake_nonce_size>(j, "nonce");
    if (!nonce) return std::nullopt;
    return hello_message{static_cast<std::uint32_t>(version), std::move(*self), *nonce};
  } catch (...) {
    return std::nullopt;
  }
}

json make_id_refusal(const id_refusal& refusal) {
  return {{"refused", refusal.reason == id_refusal::why::own_id ? "own_id" : "in_use"}, {"holder", refusal.holder}};
}

std::optional<id_refusal> parse_id_refusal(const json& control) noexcept {
  try {
    if (!control.is_object()) return std::nullopt;
    const auto r = control.find("refused");
    const auto h = control.find("holder");
    if (r == control.end() || h == control.end() || !r->is_string() || !h->is_string()) return std::nullopt;
    id_refusal out;
    const auto& reason = r->get_ref<const std::string&>();
    if (reason == "own_id") out.reason = id_refusal::why::own_id;
    else if (reason == "in_use") out.reason = id_refusal::why::in_use;
    else return std::nullopt;
    out.holder = h->get<std::string>();
    if (out.holder.size() > 300) return std::nullopt;
    return out;
  } catch (...) {
    return std::nullopt;
  }
}

json make_heartbeat() { return {{"hb", 1}}; }

json make_hold_notice(bool held) { return {{"hold", held ? 1 : 0}}; }

std::optional<bool> parse_hold_notice(const json& control) noexcept {
  if (!control.is_object()) return std::nullopt;
  const auto it = control.find("hold");
  if (it == control.end() || !it->is_number_unsigned()) return std::nullopt;
  const auto v = it->get<std::uint64_t>();
  if (v > 1) return std::nullopt;
  return v == 1;
}

handshake_nonce random_nonce() {
  handshake_nonce n{};
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1)
    throw std::runtime_error("barrel_p2p: RAND_bytes failed");
  return n;
}

}  // namespace barrel_p2p
