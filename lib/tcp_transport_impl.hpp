// Internal to the TCP transport: the state of the transport and of each of
// its connections, and the member functions of the implementation, which
// live in four files, one concern each:
//
//   tcp_transport.cpp    the public surface, the peer table (one connection
//                        per node id; the simultaneous-dial tie-break)
//   tcp_accept_dial.cpp  accepting under the handshake caps, dialling, names
//   tcp_handshake.cpp    TLS 1.3, then the hellos and id refusals
//   tcp_connection.cpp   a connection's loops, raced with `||` so that the
//                        first to end ends the others, and frames in and out:
//       read_loop   frames in -> decode (bounded) -> the channel's handler
//       write_loop  the send queue out; a heartbeat when idle; the half-close
//       watch_loop  heartbeat timeout, a peer that stopped reading, drain deadline
//
// A node id maps to at most one connection that carries traffic
// (peer_entry::active). Everything runs on the transport's executor, so the
// state below needs no locks.
#pragma once

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/detail/frame.hpp"
#include "barrel_p2p/log.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "barrel_p2p/tcp_transport.hpp"
#include "log_limiter.hpp"
#include "printable.hpp"
#include "read_hold_table.hpp"
#include "tls_context.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <array>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace barrel_p2p::detail::tcp_impl {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using tls_stream = asio::ssl::stream<tcp::socket>;
using tiebreak_bytes = std::array<std::uint8_t, 32>;

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// Handshake messages are a few hundred bytes of flat maps.
constexpr cbor_limits handshake_cbor_limits{4, 64};
// While the peer holds its reading of us (a hold notice), a write may stall
// this many heartbeat timeouts before the peer counts as not reading.
constexpr int held_write_timeout_factor = 6;
// Body reads go through read_some in pieces this large at most, so a frame
// that trickles in still counts as "heard from the peer".
constexpr std::size_t read_chunk = 64 * 1024;
// Frames up to this size are read through the connection's read buffer
// (then copied into a buffer of their own for the layers above); larger ones
// get their own allocation once their length is checked.
constexpr std::size_t read_buffer_size = 64 * 1024;
// The writer hands the socket up to this many queued frames (or bytes) in
// one gathered write: under load, one syscall carries many small messages.
constexpr std::size_t write_batch_frames = 256;
constexpr std::size_t write_batch_bytes = 1024 * 1024;

struct queued_frame {
  frame_header_bytes header;
  message_body body;
};

// A peer's frames waiting for the socket, and the bytes they hold: both
// are bounded (send_queue_limit, send_queue_bytes_limit).
struct frame_queue {
  std::deque<queued_frame> frames;
  std::size_t bytes = 0;

  static std::size_t cost(const queued_frame& f) { return frame_header_size + f.body.size(); }
  void push(queued_frame f) {
    bytes += cost(f);
    frames.push_back(std::move(f));
  }
  queued_frame pop() {
    auto f = std::move(frames.front());
    frames.pop_front();
    bytes -= cost(f);
    return f;
  }
  [[nodiscard]] bool empty() const { return frames.empty(); }
  [[nodiscard]] std::size_t size() const { return frames.size(); }
};

// A connect() in flight, shared by every caller dialling the same address.
struct dial_outcome {
  explicit dial_outcome(const executor& ex) : wake(ex, asio::steady_timer::time_point::max()) {}
  void complete(std::optional<peer_descriptor> r) {
    if (done) return;
    done = true;
    result = std::move(r);
    wake.cancel();
  }
  bool done = false;
  std::optional<peer_descriptor> result;
  std::optional<handshake_failure> failure;  // why the handshake failed, if it did
  asio::steady_timer wake;
};

enum class conn_state {
  handshaking,     // peer unknown yet
  hello_received,  // peer id known, proof pending
  established,
  closed,
};

struct connection {
  connection(tcp::socket s, std::shared_ptr<asio::ssl::context> context, bool use_tls,
             bool is_outbound)
      : raw(std::move(s)),
        tls_context(std::move(context)),
        wake(raw.get_executor(), asio::steady_timer::time_point::max()),
        read_wake(raw.get_executor(), asio::steady_timer::time_point::max()),
        tls(use_tls),
        outbound(is_outbound) {}

  tcp::socket& socket() { return stream ? stream->next_layer() : raw; }
  // The TLS state (OpenSSL's and Asio's buffers, tens of KiB) is made only
  // when the handshake starts: a connection that never speaks costs its
  // socket and this object.
  void start_tls() { stream.emplace(std::move(raw), *tls_context); }

  tcp::socket raw;  // until start_tls() moves it into the stream
  std::shared_ptr<asio::ssl::context> tls_context;  // outlives the stream made from it
  // What the PSK callbacks read and note: declared before the stream so the
  // SSL object pointing at it goes first.
  detail::tls_session tls_session;
  std::optional<tls_stream> stream;  // TLS modes, once the handshake starts
  asio::steady_timer wake;  // the writer idles on it; send() and closes cancel it
  asio::steady_timer read_wake;  // the reader waits on it while its peer is held
  bool read_held = false;        // the reader is waiting for a read_hold to end
  bool held_by_peer = false;     // the peer said it holds its reading of us
  std::optional<duration> hold_ended_at;  // when it last said it reads again
  std::optional<bool> notice_due;  // our hold state, to send before the next frames
  const bool tls;
  const bool outbound;
  std::string remote;          // for log lines
  std::string source_address;  // inbound: counted against the handshake caps
  bool counted_pending = false;
  bool silent = false;   // inbound, waiting for its first byte: evictable
  bool evicted = false;  // closed by admit() to make room
  duration accepted_at{0};
  conn_state state = conn_state::handshaking;
  peer_descriptor peer;  // from the peer's hello
  // Orders simultaneous connections between the same pair; both ends hold
  // the same bytes. TLS: exported from the session, so neither side chose
  // it. Plaintext: the dialler's hello nonce.
  tiebreak_bytes tiebreak{};
  std::shared_ptr<dial_outcome> outcome;  // outbound: the connect() waiting
  std::optional<peer_address> dialed;     // outbound: the address dialled
  frame_queue queue;                      // not yet handed to the socket
  // Bytes read but not yet decoded: [read_begin, read_end) of read_buffer.
  std::vector<std::uint8_t> read_buffer;
  std::size_t read_begin = 0;
  std::size_t read_end = 0;
  // Set when this side ends the connection: the writer flushes the queue and
  // half-closes, the reader drains until the peer closes too (bounded by
  // heartbeat_timeout), so nothing already sent is cut off.
  std::optional<disconnect_reason> closing;
  duration closing_since{0};
  bool write_shut = false;
  bool opened = false;  // counted in connections_opened
  duration last_received{0};
  duration last_sent{0};
  std::optional<duration> write_started;

  void begin_close(disconnect_reason why, duration now) {
    if (closing) return;
    closing = why;
    closing_since = now;
    wake.cancel();
    read_wake.cancel();  // a held reader drains too, until the peer closes
  }
  void close_socket() {
    error_code ignored;
    socket().shutdown(tcp::socket::shutdown_both, ignored);
    socket().close(ignored);
    wake.cancel();
    read_wake.cancel();
  }
};

// Simultaneous dials give two connections between the same pair; both ends
// keep the same one: the one dialled by the smaller id (then, for two dials
// from the same node, the smaller tie-break bytes). Both ends know both.
inline bool dialled_before(const connection& a, const connection& b, const std::string& self_id) {
  const auto key = [&](const connection& c) {
    return std::pair<const std::string&, const tiebreak_bytes&>(c.outbound ? self_id : c.peer.id,
                                                                c.tiebreak);
  };
  return key(a) < key(b);
}

struct peer_entry {
  peer_descriptor descriptor;
  std::shared_ptr<connection> active;  // null while a replacement handshake finishes
  frame_queue held;                    // sends made while active is null
  disconnect_reason deferred = disconnect_reason::closed_by_peer;
};

inline const message_body& heartbeat_body() {
  static const message_body body = encode_body(make_heartbeat());
  return body;
}

// Why a handshake failed: the metric's reason label and a line for the log.
// Not an aggregate: GCC 12 destroys braced aggregate temporaries in
// co_return/co_await expressions twice.
struct handshake_error {
  handshake_error(handshake_failure r, std::string d) : reason(r), detail(std::move(d)) {}
  handshake_failure reason;
  std::string detail;
};

struct frame_in {
  enum class status { ok, closed, failed, bad_frame } st = status::ok;
  channel ch = channel::control;
  shared_bytes body;   // as received: layers decode it
  std::string detail;  // why, for bad_frame and failed
};

class tcp_transport_impl : public std::enable_shared_from_this<tcp_transport_impl> {
 public:
  tcp_transport_impl(tcp_transport_config config, const executor& ex);

  const peer_descriptor& self() const { return self_; }

  const transport_counters& counters() const { return counters_; }

  void on_connected(transport::connected_handler h) { on_connected_ = std::move(h); }

  void on_disconnected(transport::disconnected_handler h) { on_disconnected_ = std::move(h); }

  void on_send_progress(transport::send_progress_handler h) { on_send_progress_ = std::move(h); }

  void on_message(channel ch, transport::message_handler h) {
    const auto i = static_cast<std::size_t>(ch);
    if (ch == channel::control || i >= channel_count) return;  // control is ours
    handlers_[i] = std::move(h);
  }

  task<> start();

  task<> stop();

  // The transport object is going away without stop(): silence the handlers,
  // close everything and let the coroutines wind down on the executor (they
  // hold this object alive until they have).
  void abandon();

  task<std::optional<peer_descriptor>> connect(peer_address addr);

  std::optional<handshake_failure> last_dial_failure(const peer_address& addr) const;

  bool send(const std::string& peer_id, channel ch, const message_body& body);

  void disconnect(const std::string& peer_id);

  bool is_connected(const std::string& peer_id) const { return peers_.contains(peer_id); }

  // The reader stops before its next frame (one already being read is
  // still delivered); from now on the peer's silence is not counted, and
  // the peer is told (see watch_loop).
  read_hold hold_reading(const std::string& peer_id);

  void start_hold(connection& c);

  // The last hold on a peer is gone: its readers go on.
  void resume_reading(const std::string& peer_id);

  std::size_t fullest_send_queue() const;

  std::optional<send_queue_state> send_queue(const std::string& peer_id) const;

  void set_cluster_secrets(std::string primary, std::vector<std::string> accepted);

  void reload_certificates();

  std::vector<std::string> connected_peers() const;

 private:
  // The start of stop() and abandon(): no more accepts, every socket closed.
  void close_everything();

  // Wraps a member coroutine so that its frame owns a reference to this.
  task<> keep(task<> t) { return hold(shared_from_this(), std::move(t)); }

  static task<> hold(std::shared_ptr<tcp_transport_impl> self, task<> t) {
    (void)self;
    co_await std::move(t);
  }

  // Real sockets run on real time, so time comes from the steady clock and
  // timers on the executor rather than through the scheduler: the transport
  // then holds no reference to it, and one destroyed without stop() can wind
  // down after its scheduler is gone.
  static duration clock_now() {
    return std::chrono::duration_cast<duration>(
        std::chrono::steady_clock::now().time_since_epoch());
  }

  bool uses_tls() const { return config_.security != transport_security::insecure_plaintext; }

  std::shared_ptr<connection> make_connection(tcp::socket socket, bool outbound) {
    return std::make_shared<connection>(std::move(socket), tls_context_, uses_tls(), outbound);
  }

  // Ids come from peers: escaped, so that one cannot forge log lines.
  static std::string describe(const connection& c) {
    return c.peer.id.empty() ? c.remote : detail::printable(c.peer.id) + " (" + c.remote + ")";
  }

  // Calls a user handler; one that throws is logged, never fatal to the
  // transport's loops.
  template <class Handler, class... Args>
  void call_handler(const char* what, const Handler& h, Args&&... args) {
    if (!h) return;
    try {
      h(std::forward<Args>(args)...);
    } catch (...) {
      log(std::string(what) + " handler threw: " + exception_text(std::current_exception()));
    }
  }

  void report_connected(const peer_descriptor& peer, bool inbound) {
    call_handler("connected", on_connected_, peer, inbound);
  }

  void report_disconnected(const std::string& peer_id, disconnect_reason why) {
    call_handler("disconnected", on_disconnected_, peer_id, why);
    report_send_progress(peer_id, 0);  // its queue went with it
  }

  void report_send_progress(const std::string& peer_id, std::size_t bytes_written) {
    call_handler("send progress", on_send_progress_, peer_id, bytes_written);
  }

  // -------- The peer table and timers (tcp_transport.cpp)

  task<bool> sleep_for(duration d);

  // Counts a refused handshake; logs at most one line per reason a second,
  // so a flood of bad connections cannot flood the log.
  void note_handshake_failure(handshake_failure reason, const std::string& line);

  std::optional<peer_descriptor> connected_at(const peer_address& addr) const;

  bool handshake_pending(const std::string& peer_id) const;

  void complete_dial(connection& c, std::optional<peer_descriptor> result);

  void settle_dial(const peer_address& addr, const std::shared_ptr<dial_outcome>& outcome,
                   std::optional<peer_descriptor> result);

  void establish(const std::shared_ptr<connection>& conn);

  void finish(const std::shared_ptr<connection>& conn, disconnect_reason loop_reason);

  // -------- Accepting under the handshake caps, dialling, name lookups (tcp_accept_dial.cpp)

  task<> accept_loop();

  task<> dial(peer_address addr, std::shared_ptr<dial_outcome> outcome);

  task<std::optional<std::vector<tcp::endpoint>>> resolve(const peer_address& addr, duration limit);

  task<bool> dial_socket(tcp::socket& socket, const peer_address& addr);

  // The caps count sources by IPv4 address and by IPv6 /64 (one host
  // usually owns a whole /64).
  static std::string source_of(const asio::ip::address& a);

  // Room for one more inbound handshake from `source`? When a cap is full,
  // the oldest connection that has not sent a byte yet (from that source,
  // or from any source for the total cap) makes room: silent sockets can
  // then only push out each other, never a peer that is talking.
  bool admit(const std::string& source);

  void release_pending(connection& conn);

  // A name lookup runs getaddrinfo on Asio's resolver thread and cannot be
  // cancelled once it runs: the dial waits for it at most `limit` (inside
  // the connect timeout) and leaves a slow one to finish on its own. Lookups
  // in flight are bounded, so names that never answer cannot pile up.
  struct name_lookup {
    explicit name_lookup(const executor& ex) : done(ex, asio::steady_timer::time_point::max()) {}
    asio::steady_timer done;  // cancelled when the lookup completes
    bool completed = false;
    error_code ec;
    std::vector<tcp::endpoint> endpoints;
  };
  static constexpr std::size_t max_lookups_in_flight = 8;
  std::shared_ptr<std::size_t> lookups_in_flight_ = std::make_shared<std::size_t>(0);

  // -------- TLS, the hellos and id refusals (tcp_handshake.cpp)

  void remember_own_nonce(const handshake_nonce& n);

  bool is_own_nonce(const handshake_nonce& n) const;

  // The whole handshake, TLS included, within handshake_timeout. On timeout
  // the socket is closed, which ends whatever read or write was pending.
  task<bool> handshake_within_timeout(std::shared_ptr<connection> conn);

  task<> handshake_deadline(std::shared_ptr<connection> conn);

  // TLS first (authenticates the peer as a holder of a cluster key or of a
  // certificate from the cluster's CA, and encrypts everything after), then
  // the hellos: the dialler's first, then the accepting side's (or its id
  // refusal). Returns why it failed, or nullopt.
  task<std::optional<handshake_error>> handshake(std::shared_ptr<connection> conn);

  // The accepting side answered our hello with an id refusal.
  handshake_error refused_by_peer(connection& conn, const id_refusal& r) const;

  // -------- A connection's loops; frames in and out (tcp_connection.cpp)

  task<> run_connection(std::shared_ptr<connection> conn);

  task<disconnect_reason> read_loop(std::shared_ptr<connection> conn);

  // Outside the queue and its limits: one slot holding the latest state,
  // written before the next frames (so a hold and its release made while
  // the writer is busy go out as the release alone, never out of order).
  void send_hold_notice(connection& conn, bool held);

  // False when the handler found the bytes are not a message.
  bool deliver(const connection& conn, channel ch, const byte_slice& body);

  task<disconnect_reason> write_loop(std::shared_ptr<connection> conn);

  task<disconnect_reason> watch_loop(std::shared_ptr<connection> conn);

  // The same awaitable type either way; not coroutines themselves, so the
  // hot path pays no extra frame. The caller keeps `conn` and the buffers
  // alive until the operation completes.
  static task<std::tuple<error_code, std::size_t>> read_some(connection& conn, asio::mutable_buffer b);

  static task<std::tuple<error_code, std::size_t>> write_all(connection& conn,
                                                             const std::vector<asio::const_buffer>& b);

  // Makes at least `need` bytes (at most the buffer's size) available in
  // the connection's read buffer. One read_some usually brings many small
  // frames at once: the reader then decodes them without another syscall.
  task<error_code> fill(std::shared_ptr<connection> conn, std::size_t need);

  // One frame, its body as received (copied out of the read buffer into a
  // buffer of its own, which the layers above may keep a slice of).
  task<frame_in> read_frame(std::shared_ptr<connection> conn, std::size_t max_frame_bytes);

  task<bool> write_frames(std::shared_ptr<connection> conn, const std::vector<queued_frame>& frames);

  task<bool> write_frame(std::shared_ptr<connection> conn, const queued_frame& frame);

  // Handshake frames go out before the writer runs.
  task<bool> write_direct(std::shared_ptr<connection> conn, message_body body);

  tcp_transport_config config_;
  logger log;
  executor ex_;
  task_group group_;
  tcp::acceptor acceptor_;
  peer_descriptor self_;
  bool started_ = false;
  bool stopping_ = false;
  bool stopped_ = false;

  transport::connected_handler on_connected_;
  transport::disconnected_handler on_disconnected_;
  transport::send_progress_handler on_send_progress_;
  std::array<transport::message_handler, channel_count> handlers_;
  transport_counters counters_;
  detail::read_hold_table read_holds_{[this](const std::string& peer_id) { resume_reading(peer_id); }};

  std::map<std::string, peer_entry> peers_;                      // connected, by id
  std::vector<std::shared_ptr<connection>> connections_;         // every live socket
  std::map<std::string, std::shared_ptr<dial_outcome>> dials_;  // in flight, by address
  std::map<std::string, handshake_failure> dial_failures_;      // last_dial_failure, by address

  // Connections begin with the keys and context current when they start.
  std::shared_ptr<const detail::keyring> keys_;          // psk mode
  std::shared_ptr<asio::ssl::context> tls_context_;
  std::size_t pending_inbound_ = 0;                      // inbound, still in the handshake
  std::map<std::string, std::size_t> pending_by_source_;  // the same, by source address
  std::array<detail::log_limiter, handshake_failure_count> failure_log_{};  // one line a second per reason
  // The hello nonces this node sent most recently. A hello with our id and
  // one of these is our own, come back (a self-connection); with any other
  // nonce it is another process under our id. A ring, not a set erased at
  // the end of each handshake: the two ends of a self-connection finish in
  // either order.
  std::array<handshake_nonce, 64> own_nonces_{};
  std::size_t own_nonces_next_ = 0;
  std::size_t own_nonces_size_ = 0;
};

}  // namespace barrel_p2p::detail::tcp_impl
