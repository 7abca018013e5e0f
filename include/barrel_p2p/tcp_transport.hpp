// The TCP transport: real sockets, TLS 1.3 on every connection, heartbeats.
//
// Every connection runs a TLS 1.3 handshake first (OpenSSL through
// Boost.Asio's ssl::stream), authenticated one of two ways:
//   psk           an external pre-shared key derived from the cluster secret
//                 (HKDF-SHA256), with (EC)DHE for forward secrecy; no
//                 certificates. A keyring accepts several secrets for rotation.
//   certificates  mutual TLS: both sides present a certificate from the
//                 cluster's CA, and a node id must be named by its
//                 certificate's subjectAltName.
// Inside the TLS channel: a hello {"v", "id", "host", "port", "nonce"} each
// way, then frames: u32 big-endian length of what follows, u8 channel, CBOR
// body. The length is checked against max_frame_bytes before anything is
// allocated. See docs/reference/wire.md and docs/concepts/security.md.
#pragma once

#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/transport.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace barrel_p2p {

/// How a TCP transport secures its connections.
enum class transport_security {
  psk,           ///< TLS 1.3 with a key derived from the cluster secret (default)
  certificates,  ///< TLS 1.3 with mutual certificates; ids bound to certificates
  /// No encryption, no authentication: anyone who can reach the port is a
  /// member. For tests and benchmarks only; logged loudly at start.
  insecure_plaintext,
};
[[nodiscard]] std::string_view to_string(transport_security s) noexcept;

/// PEM files for transport_security::certificates.
struct tls_files {
  std::filesystem::path ca;           ///< trusted CA certificate(s)
  std::filesystem::path certificate;  ///< this node's certificate chain
  std::filesystem::path private_key;  ///< its private key (not encrypted)
};

/// Shortest cluster secret accepted: a shorter one could be guessed offline.
inline constexpr std::size_t min_secret_bytes = 16;

struct tcp_transport_config {
  /// This node's id (unique in the cluster) and listen address. Port 0 picks
  /// a free port; self().address then reports the bound one.
  std::string node_id;
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 0;
  /// The address peers should dial, when it differs from the listen address
  /// (a node listening on 0.0.0.0). Empty: the listen address.
  std::string advertise_host;
  /// How connections are authenticated and encrypted (see the top of this file).
  transport_security security = transport_security::psk;
  /// psk: the primary cluster secret, at least min_secret_bytes long. This
  /// node dials with the key derived from it and accepts it.
  std::string cluster_secret;
  /// psk: more secrets accepted from dialling peers (never dialled with), for
  /// rotation without downtime. Same length rule.
  std::vector<std::string> accepted_secrets;
  /// certificates: the cluster CA, this node's certificate chain and key
  /// (PEM files). The certificate must name node_id in its subjectAltName.
  tls_files certificates;
  /// Inbound connections allowed to be in their handshake at once, in total
  /// and from one source address; more are closed at once (counted as
  /// over_capacity). Outbound dials are not limited here.
  std::size_t max_pending_handshakes = 256;
  std::size_t max_pending_handshakes_per_address = 32;
  /// Largest frame accepted or sent (length field included). Protects memory:
  /// a peer announcing more is disconnected before anything is allocated.
  std::size_t max_frame_bytes = 4 * 1024 * 1024;
  /// Messages queued per connection before new ones are dropped (counted):
  /// a slow peer cannot make this node buffer without bound. Gossip repairs
  /// drops (lazy push, anti-entropy).
  std::size_t send_queue_limit = 4096;
  /// Bytes queued per connection (frames, headers included) before new
  /// messages are dropped and counted, whatever their number: a queue of
  /// large payloads is bounded in memory, not only in count. At least
  /// max_frame_bytes. A payload shared by several peers' queues counts in
  /// each.
  std::size_t send_queue_bytes_limit = 64 * 1024 * 1024;
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

inline constexpr std::uint32_t protocol_version = 5;

/// A transport over TCP, with what only real connections have: keys and
/// certificates that can change while it runs.
class tcp_transport : public transport {
 public:
  /// psk mode: replaces the keyring. New connections dial with `primary` and
  /// accept `primary` or any of `accepted`; established connections are not
  /// touched. Throws std::invalid_argument (keyring unchanged) on a secret
  /// shorter than min_secret_bytes, std::logic_error in another mode.
  /// Call on the transport's executor (the node's strand).
  virtual void set_cluster_secrets(std::string primary, std::vector<std::string> accepted) = 0;
  /// certificates mode: re-reads the CA, certificate and key files for new
  /// connections. Throws std::runtime_error (old files kept) when they do
  /// not load or do not name this node; std::logic_error in another mode.
  /// Call on the transport's executor.
  virtual void reload_certificates() = 0;
};

/// Creates a TCP transport on the scheduler's executor. Throws
/// std::invalid_argument on a bad config (empty id, an id over 255 bytes, a
/// secret shorter than min_secret_bytes in psk mode, max_frame_bytes below
/// 1024, a zero send_queue_limit or handshake cap, a duration that is not
/// positive) and std::runtime_error when certificate files do not load or
/// do not name node_id. Call stop() before destroying it; a transport
/// destroyed without stop() silences its handlers and winds down on the
/// executor.
[[nodiscard]] std::unique_ptr<tcp_transport> make_tcp_transport(tcp_transport_config config,
                                                                scheduler& sched);

}  // namespace barrel_p2p
