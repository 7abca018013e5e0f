// The TCP transport: real sockets, an authenticated handshake, heartbeats.
//
// Frame: u32 big-endian length of what follows, u8 channel, CBOR body. The
// length is checked against max_frame_bytes before anything is allocated.
// Handshake (channel control), both directions at once:
//   hello {"v": protocol, "id", "host", "port", "nonce": 32 random bytes}
//   auth  {"mac": HMAC-SHA256(secret, "barrel_p2p-auth" | peer nonce | own id | peer id)}
// so each side proves it knows the cluster secret by answering the other's
// challenge; the secret never crosses the wire. See docs/reference/wire.md.
#pragma once

#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/transport.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace barrel_p2p {

struct tcp_transport_config {
  /// This node's id (unique in the cluster) and listen address. Port 0 picks
  /// a free port; self().address then reports the bound one.
  std::string node_id;
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 0;
  /// The address peers should dial, when it differs from the listen address
  /// (a node listening on 0.0.0.0). Empty: the listen address.
  std::string advertise_host;
  /// Shared by every node of the cluster; a peer that cannot prove it knows
  /// it is disconnected during the handshake. Must not be empty.
  std::string cluster_secret;
  /// Largest frame accepted or sent (length field included). Protects memory:
  /// a peer announcing more is disconnected before anything is allocated.
  std::size_t max_frame_bytes = 4 * 1024 * 1024;
  /// Messages queued per connection before new ones are dropped (counted):
  /// a slow peer cannot make this node buffer without bound. Gossip repairs
  /// drops (lazy push, anti-entropy).
  std::size_t send_queue_limit = 4096;
  /// Dial timeout, and time allowed for the whole handshake.
  std::chrono::milliseconds connect_timeout{3000};
  std::chrono::milliseconds handshake_timeout{3000};
  /// A heartbeat is sent when a connection has been idle this long; a peer
  /// silent for heartbeat_timeout is declared failed.
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds heartbeat_timeout{5000};
  /// Log sink for one-line events (bad frames, failed handshakes). Empty: stderr.
  std::function<void(const std::string&)> log;
};

inline constexpr std::uint32_t protocol_version = 1;

/// Creates a TCP transport on the scheduler's executor. Throws
/// std::invalid_argument on a bad config (empty id or secret, an id over 255
/// bytes, max_frame_bytes below 1024, a zero send_queue_limit, a duration
/// that is not positive). Call stop() before destroying it; a transport
/// destroyed without stop() silences its handlers and winds down on the
/// executor.
[[nodiscard]] std::unique_ptr<transport> make_tcp_transport(tcp_transport_config config,
                                                            scheduler& sched);

}  // namespace barrel_p2p
