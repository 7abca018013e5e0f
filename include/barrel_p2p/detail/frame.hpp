// Internal (detail/): shared by the library, its tests and fuzzers; not API.
// Frames and handshake messages of the TCP transport, as pure functions.
//
// No I/O here: the TCP transport (lib/tcp_*.cpp) reads and writes bytes, these functions say
// what the bytes mean. Everything that looks at bytes or json from a peer is
// noexcept and reports a bad shape as a value, so the fuzzer (and a hostile
// peer) can feed it anything.
//
// Frame:  u32 big-endian length of what follows | u8 channel | CBOR body
// Hello:  {"v": u32, "id": s, "host": s, "port": u16, "nonce": 32 bytes},
//         sent inside TLS once its handshake is done: by the dialler first,
//         then by the accepting side, which may answer with an id refusal
//         {"refused": "own_id" | "in_use", "holder": "host:port"} instead
// See docs/reference/wire.md for the whole exchange.
#pragma once

#include <barrel_p2p/transport.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace barrel_p2p {

/// The bytes before a body: the u32 length and the u8 channel.
inline constexpr std::size_t frame_header_size = 5;

/// Largest frame accepted before the hello is in: a hello is
/// well under 600 bytes, and a peer that has not said who it is should not make us
/// allocate max_frame_bytes.
inline constexpr std::size_t handshake_max_frame_bytes = 1024;

using frame_header_bytes = std::array<std::uint8_t, frame_header_size>;

/// A validated header: which channel, and how many body bytes follow.
struct frame_header {
  channel ch = channel::control;
  std::size_t body_size = 0;
};

enum class frame_error {
  none,
  truncated,        ///< fewer than frame_header_size bytes
  zero_length,      ///< length 0: not even a channel byte
  empty_body,       ///< length 1: a channel but no CBOR item
  oversized,        ///< 4 + length > max_frame_bytes
  unknown_channel,  ///< channel byte beyond the known channels
};
[[nodiscard]] std::string_view to_string(frame_error e) noexcept;

struct parsed_frame_header {
  frame_error error = frame_error::none;
  frame_header header;
  /// The length field as received (for log lines), when there was one.
  std::uint32_t length = 0;
  explicit operator bool() const noexcept { return error == frame_error::none; }
};

/// The header of a frame carrying `body_size` bytes on `ch`.
/// Precondition: body_size < 2^32 - 1 (callers check max_frame_bytes first).
[[nodiscard]] frame_header_bytes encode_frame_header(channel ch, std::size_t body_size) noexcept;

/// Reads and validates a header from the first frame_header_size bytes of
/// `bytes` against `max_frame_bytes` (the whole frame, length field
/// included). Decides from the length field alone, before the body exists.
[[nodiscard]] parsed_frame_header parse_frame_header(std::span<const std::uint8_t> bytes,
                                                     std::size_t max_frame_bytes) noexcept;

/// Checks the length field alone (the first 4 bytes of `bytes`), as soon as
/// it has arrived: a zero length has no channel byte to wait for, and an
/// oversized one is refused before anything more is read. `header` is not
/// filled; parse_frame_header decides the rest once the channel byte is in.
[[nodiscard]] parsed_frame_header parse_frame_length(std::span<const std::uint8_t> bytes,
                                                     std::size_t max_frame_bytes) noexcept;

/// A whole frame (header and body) in one buffer: for tests and tools; the
/// transport writes header and shared body as two buffers instead.
[[nodiscard]] std::vector<std::uint8_t> encode_frame(channel ch,
                                                     std::span<const std::uint8_t> body);

// ---------------------------------------------------------------- handshake

inline constexpr std::size_t handshake_nonce_size = 32;
using handshake_nonce = std::array<std::uint8_t, handshake_nonce_size>;

/// The first message each side sends inside TLS: who it is and which
/// protocol it speaks. The nonce orders simultaneous connections only in
/// insecure_plaintext mode (TLS connections use exported key material).
struct hello_message {
  std::uint32_t version = 0;
  peer_descriptor self;
  handshake_nonce nonce{};
};

[[nodiscard]] json make_hello(const hello_message& hello);
/// Validating parse of a peer's hello: nullopt on any bad shape (missing or
/// mistyped field, id or host empty or over 255 bytes, port over 65535,
/// version over u32, nonce not exactly 32 bytes). Never throws. The version
/// is returned as sent; whether it is acceptable is the caller's decision.
[[nodiscard]] std::optional<hello_message> parse_hello(const json& j) noexcept;

/// What the accepting side sends instead of its hello when it refuses the
/// dialler's node id: {"refused": s, "holder": s}.
struct id_refusal {
  enum class why : std::uint8_t {
    own_id,  ///< "own_id": the id is the accepting node's own (two nodes share it)
    in_use,  ///< "in_use": another node is connected under that id, from `holder`
  };
  why reason = why::in_use;
  /// Where the node that has the id listens ("host:port", at most 300 bytes).
  std::string holder;
};
[[nodiscard]] json make_id_refusal(const id_refusal& refusal);
/// Validating parse; nullopt for anything else (a hello, an unknown
/// reason, a holder over 300 bytes). Never throws.
[[nodiscard]] std::optional<id_refusal> parse_id_refusal(const json& control) noexcept;

/// The heartbeat sent on an idle connection (channel control).
[[nodiscard]] json make_heartbeat();
/// A hold notice (channel control): {"hold": 1} when this node stops
/// reading the connection for a receive budget (transport::hold_reading),
/// {"hold": 0} when it reads again. A node that does not know it takes it
/// for a heartbeat.
[[nodiscard]] json make_hold_notice(bool held);
/// Whether a control body is a hold notice, and which; nullopt otherwise.
[[nodiscard]] std::optional<bool> parse_hold_notice(const json& control) noexcept;

/// 32 bytes from the OpenSSL CSPRNG. Throws std::runtime_error if it fails.
[[nodiscard]] handshake_nonce random_nonce();

}  // namespace barrel_p2p
