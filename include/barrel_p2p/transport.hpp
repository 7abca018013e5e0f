// Framed messages between node ids: the interface every layer above talks to.
//
// Two implementations: TCP (tcp_transport.hpp) and the in-process simulated
// network (sim_network.hpp). Membership, broadcast and replicas run unchanged
// on either. A message is bytes on a channel: each layer encodes its own
// typed messages (CBOR, see the *_messages.hpp headers) once, the transport
// writes the same shared bytes to every peer, and delivers received bytes,
// undecoded and shared, to the handler registered for the channel. The layer
// decodes them (bounded by cbor_limits) or keeps a slice of them.
//
// Threading: a transport, its handlers and its callers all run on the node's
// executor (strand). Handlers are called from the transport's reader
// coroutine and must not block.
#pragma once

#include <barrel_p2p/shared_bytes.hpp>
#include <barrel_p2p/task.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace barrel_p2p {

using json = nlohmann::json;

/// Where a node listens. For the simulated network, host is "sim" and port
/// the node's index.
struct peer_address {
  std::string host;
  std::uint16_t port = 0;

  // Not an aggregate on purpose: GCC 12 destroys a braced aggregate temporary
  // passed to a coroutine twice (`co_await t.connect({"h", 1})` crashes);
  // with a user-provided constructor the same call is safe.
  peer_address() = default;
  peer_address(std::string h, std::uint16_t p) : host(std::move(h)), port(p) {}

  friend bool operator==(const peer_address&, const peer_address&) = default;
  [[nodiscard]] std::string to_string() const;
};

/// A node: its unique id and where it listens. Travels in membership
/// messages as {"id": s, "host": s, "port": n}.
struct peer_descriptor {
  std::string id;
  peer_address address;

  peer_descriptor() = default;  // not an aggregate: see peer_address
  peer_descriptor(std::string i, peer_address a) : id(std::move(i)), address(std::move(a)) {}
  friend bool operator==(const peer_descriptor&, const peer_descriptor&) = default;
};

[[nodiscard]] json to_json(const peer_descriptor& d);
/// Validating parse of a descriptor from a peer: nullopt on any bad shape
/// (never throws). Ids are 1..255 bytes, hosts 1..255 bytes.
[[nodiscard]] std::optional<peer_descriptor> descriptor_from_json(const json& j) noexcept;

/// What a frame is for. The transport itself owns `control` (handshake,
/// heartbeats); the others are dispatched to the layer that registered them.
enum class channel : std::uint8_t {
  control = 0,
  membership = 1,
  broadcast = 2,
  replica = 3,
  clock = 4,  ///< clock offset probes (detail/clock_messages.hpp)
  query = 5,  ///< answers to queries, straight to the asker (queries.hpp)
};
inline constexpr std::size_t channel_count = 6;

/// What one send writes: `head`, then `tail` unchanged. Built once and
/// shared by every peer's queue (a broadcast to five peers encodes once).
/// The tail carries bytes encoded elsewhere, e.g. a broadcast payload that a
/// relay forwards as it received it, behind a new head.
struct message_body {
  shared_bytes head;
  byte_slice tail;

  message_body() = default;
  explicit message_body(shared_bytes h, byte_slice t = {}) : head(std::move(h)), tail(std::move(t)) {}
  [[nodiscard]] std::size_t size() const noexcept { return head.size() + tail.size(); }
  explicit operator bool() const noexcept { return static_cast<bool>(head); }
  /// The whole body in one shared buffer, as the receiver reads it: the
  /// head itself when there is no tail, else a copy.
  [[nodiscard]] shared_bytes to_shared() const {
    return tail.empty() ? head : shared_bytes::concat(head.bytes(), tail.bytes());
  }
  /// The whole body in one buffer (a copy).
  [[nodiscard]] std::vector<std::uint8_t> to_bytes() const {
    std::vector<std::uint8_t> out;
    out.reserve(size());
    out.insert(out.end(), head.begin(), head.end());
    out.insert(out.end(), tail.bytes().begin(), tail.bytes().end());
    return out;
  }
};
/// A json message as one CBOR item (for messages that are json by nature:
/// replica control, tests).
[[nodiscard]] message_body encode_body(const json& message);

/// One peer's send queue: what waits in it, where it drops, and how long
/// the socket has been busy with the write in progress.
struct send_queue_state {
  std::size_t frames = 0;
  std::size_t bytes = 0;
  std::size_t frame_limit = 0;  ///< a send beyond either limit is dropped
  std::size_t byte_limit = 0;
  /// How long the write in progress has lasted (0 when none is). A write
  /// carries a batch of frames (up to 1 MiB): a long one means the peer,
  /// or the path to it, takes bytes slowly or not at all.
  std::chrono::milliseconds blocked_for{0};

  /// How full the queue is, 0..1: the larger of its two fill ratios.
  [[nodiscard]] double fill() const noexcept {
    const auto ratio = [](std::size_t n, std::size_t limit) {
      return limit == 0 ? 0.0 : static_cast<double>(n) / static_cast<double>(limit);
    };
    return std::max(ratio(frames, frame_limit), ratio(bytes, byte_limit));
  }
};

enum class disconnect_reason {
  closed_locally,     ///< disconnect() or stop() on this node
  closed_by_peer,     ///< orderly close or EOF from the peer
  heartbeat_timeout,  ///< nothing heard within the heartbeat timeout
  io_error,           ///< socket error
  protocol_error,     ///< bad frame, oversized length, undecodable body
  replaced,           ///< a simultaneous connection to the same peer won
};
[[nodiscard]] std::string_view to_string(disconnect_reason r) noexcept;

/// Why a handshake was refused (a label of the handshake failure metric).
enum class handshake_failure : std::uint8_t {
  timeout,        ///< not finished within handshake_timeout
  over_capacity,  ///< too many inbound handshakes at once (in total or from one address)
  tls,            ///< not TLS, or the TLS handshake failed (wrong key, alert, garbage)
  unknown_key,    ///< the peer's key is not in this node's keyring
  certificate,    ///< the peer's certificate did not verify (other CA, expired...)
  identity,       ///< the claimed node id is not the one the certificate names
  protocol,       ///< malformed hello, other protocol version, bad frame
  self,           ///< a connection to this node itself (a contact that is its own address)
  duplicate_id,   ///< another node, elsewhere, uses this node's id (its hello or refusal said so)
  id_in_use,      ///< a second node claimed the id of a connected peer (refused here), or a peer refused this
                  ///< node because another node is connected to it under this node's id
};
inline constexpr std::size_t handshake_failure_count = 10;
[[nodiscard]] std::string_view to_string(handshake_failure f) noexcept;

/// Counters every transport keeps (exported as metrics).
struct transport_counters {
  std::uint64_t connections_opened = 0;
  std::uint64_t connections_closed = 0;
  std::uint64_t connect_failures = 0;
  std::uint64_t handshake_failures = 0;  ///< every refused handshake (sum of the below)
  std::array<std::uint64_t, handshake_failure_count> handshake_failures_by_reason{};
  std::uint64_t frames_sent = 0;
  std::uint64_t frames_received = 0;
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
  std::uint64_t bad_frames = 0;          ///< oversized, unknown channel, bad CBOR
  std::uint64_t send_queue_drops = 0;    ///< messages dropped by a full send queue
  std::uint64_t heartbeat_timeouts = 0;
  std::uint64_t read_holds = 0;          ///< times reading from a peer stopped for a read_hold
};

/// While alive, the transport reads nothing more from one peer (see
/// transport::hold_reading). Move-only; releasing the last hold on a peer
/// resumes reading it. Empty when default-constructed or moved from.
class read_hold {
 public:
  read_hold() = default;
  explicit read_hold(std::shared_ptr<void> release) : release_(std::move(release)) {}
  read_hold(read_hold&&) noexcept = default;
  read_hold& operator=(read_hold&&) noexcept = default;
  read_hold(const read_hold&) = delete;
  read_hold& operator=(const read_hold&) = delete;
  explicit operator bool() const noexcept { return release_ != nullptr; }
  void reset() noexcept { release_.reset(); }

 private:
  std::shared_ptr<void> release_;  // its deleter releases the hold
};

class transport {
 public:
  /// A connection is up (after the handshake). `inbound` is true when the
  /// peer dialled us.
  using connected_handler = std::function<void(const peer_descriptor& peer, bool inbound)>;
  /// A connection is gone, for `reason`. Called once per connection that
  /// reached connected_handler.
  using disconnected_handler = std::function<void(const std::string& peer_id, disconnect_reason)>;
  /// A frame arrived on a channel from a connected peer: its body, as
  /// received (the handler may keep the slice). Return false when the
  /// bytes are not a message at all (not CBOR): the transport counts a bad
  /// frame and closes the connection (protocol_error). A message that
  /// decodes but makes no sense is the layer's to drop and count.
  using message_handler = std::function<bool(const std::string& peer_id, const byte_slice& body)>;
  /// The send queue to a peer shrank: a batch of its frames was written
  /// (`bytes_written`: what they counted in send_queue_state::bytes), or
  /// the connection ended and its queue with it (0).
  using send_progress_handler = std::function<void(const std::string& peer_id, std::size_t bytes_written)>;

  virtual ~transport() = default;

  /// This node's id and advertised address.
  [[nodiscard]] virtual const peer_descriptor& self() const = 0;

  /// Set before start(); one handler per channel (control is reserved).
  virtual void on_connected(connected_handler h) = 0;
  virtual void on_disconnected(disconnected_handler h) = 0;
  virtual void on_message(channel ch, message_handler h) = 0;

  /// Starts listening. Throws std::system_error when the address is taken.
  virtual task<> start() = 0;
  /// Closes every connection and ends every loop; returns when they have.
  virtual task<> stop() = 0;

  /// Dials `addr` (or reuses an existing connection to the node there) and
  /// completes the handshake. Returns the peer as it identified itself, or
  /// nullopt on refusal, timeout or a failed handshake (counted).
  virtual task<std::optional<peer_descriptor>> connect(peer_address addr) = 0;

  /// Queues `body` for a connected peer. False when there is no connection
  /// or the peer's send queue is full (the message is dropped and counted).
  virtual bool send(const std::string& peer_id, channel ch, const message_body& body) = 0;

  /// Closes the connection to `peer_id`, if any. disconnected_handler runs
  /// with closed_locally.
  virtual void disconnect(const std::string& peer_id) = 0;

  [[nodiscard]] virtual bool is_connected(const std::string& peer_id) const = 0;
  [[nodiscard]] virtual std::vector<std::string> connected_peers() const = 0;
  /// Messages waiting in the fullest per-peer send queue (0 for a
  /// transport without queues). For diagnostics and tests.
  [[nodiscard]] virtual std::size_t fullest_send_queue() const { return 0; }
  /// The send queue to one connected peer, for flow control above the
  /// transport (Plumtree announces instead of pushing to a congested peer;
  /// a local write waits for room at its eager peers). nullopt when the
  /// peer is not connected or the transport has no queues (the simulated
  /// network): never congested.
  [[nodiscard]] virtual std::optional<send_queue_state> send_queue(const std::string& peer_id) const {
    (void)peer_id;
    return std::nullopt;
  }
  /// One handler (set when the layer above starts; replaced by a later
  /// call), run on the node's executor each time a send queue shrinks:
  /// what waits for room in a queue (a local write under backpressure)
  /// wakes on it. A transport that reports send_queue must call it, or
  /// such waits last until their timers; one without queues never does.
  virtual void on_send_progress(send_progress_handler h) { (void)h; }
  /// Why the last connect() to `addr` failed its handshake, if it did (and
  /// nothing has connected there since): what the dial itself met, not a
  /// counter other connections move. Kept for the last 256 addresses.
  [[nodiscard]] virtual std::optional<handshake_failure> last_dial_failure(const peer_address& addr) const {
    (void)addr;
    return std::nullopt;
  }

  /// A receive budget: while the returned hold (or another on the same peer)
  /// is alive, nothing more is read from `peer_id`, so the peer's own sends
  /// back up and TCP pushes back on it. For a layer whose queued work from
  /// one peer is over its budget. The frame being handled is not affected.
  /// Meanwhile the peer's silence is not held against it (its heartbeats are
  /// not read); a peer that also stops reading is still closed by the write
  /// timeout. Holds may be taken on a peer not connected (they apply if it
  /// connects) and must be released: a hold kept forever is a peer never
  /// read again. On the node's executor; the hold may outlive the transport.
  [[nodiscard]] virtual read_hold hold_reading(const std::string& peer_id) = 0;
  [[nodiscard]] virtual const transport_counters& counters() const = 0;
};

}  // namespace barrel_p2p
