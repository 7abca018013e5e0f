// The TCP transport. One coroutine per connection runs the handshake (TLS
// 1.3, then a hello each way inside it), then three loops raced with `||` so
// that the first to end ends the others:
//
//   read_loop   frames in -> decode (bounded) -> the channel's handler
//   write_loop  the send queue out; a heartbeat when idle; the half-close
//   watch_loop  heartbeat timeout, a peer that stopped reading, drain deadline
//
// A node id maps to at most one connection that carries traffic
// (peer_entry::active). Everything runs on the scheduler's executor, so the
// state below needs no locks.
#include "barrel_p2p/tcp_transport.hpp"
#include "barrel_p2p/log.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/frame.hpp"
#include "barrel_p2p/task_group.hpp"
#include "log_limiter.hpp"
#include "printable.hpp"
#include "read_hold_table.hpp"
#include "tls_context.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <variant>

namespace barrel_p2p {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;
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
bool dialled_before(const connection& a, const connection& b, const std::string& self_id) {
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

const message_body& heartbeat_body() {
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
  tcp_transport_impl(tcp_transport_config config, const executor& ex)
      : config_(std::move(config)),
        ex_(ex),
        group_(ex_, [this](const std::string& name, const std::string& what) {
          log("task " + name + " failed: " + what);
        }),
        acceptor_(ex_) {
    if (config_.node_id.empty()) throw std::invalid_argument("tcp_transport: empty node_id");
    if (config_.node_id.size() > 255)
      throw std::invalid_argument("tcp_transport: node_id over 255 bytes");
    if (config_.max_pending_handshakes == 0 || config_.max_pending_handshakes_per_address == 0)
      throw std::invalid_argument("tcp_transport: handshake caps must be positive");
    if (config_.max_frame_bytes < handshake_max_frame_bytes)
      throw std::invalid_argument("tcp_transport: max_frame_bytes below the handshake size");
    // The length field is 32 bits: a larger limit would let a length wrap.
    if (config_.max_frame_bytes > std::numeric_limits<std::uint32_t>::max())
      throw std::invalid_argument("tcp_transport: max_frame_bytes over 2^32 - 1");
    if (config_.send_queue_limit == 0)
      throw std::invalid_argument("tcp_transport: send_queue_limit must be positive");
    if (config_.send_queue_bytes_limit < config_.max_frame_bytes)
      throw std::invalid_argument("tcp_transport: send_queue_bytes_limit below max_frame_bytes");
    if (config_.connect_timeout <= duration{0} || config_.handshake_timeout <= duration{0} ||
        config_.heartbeat_interval <= duration{0} || config_.heartbeat_timeout <= duration{0})
      throw std::invalid_argument("tcp_transport: timeouts and intervals must be positive");
    switch (config_.security) {
      case transport_security::psk:
        try {
          keys_ = detail::make_keyring(config_.cluster_secret, config_.accepted_secrets);
        } catch (const std::invalid_argument& e) {
          throw std::invalid_argument(std::string("tcp_transport: ") + e.what());
        }
        tls_context_ = detail::make_psk_context();
        break;
      case transport_security::certificates:
        tls_context_ = detail::make_certificate_context(config_.certificates, config_.node_id);
        break;
      case transport_security::insecure_plaintext:
        break;
    }
    // The secrets live in the keyring from now on, not in a config copy.
    config_.cluster_secret.clear();
    config_.accepted_secrets.clear();
    self_.id = config_.node_id;
    self_.address.host =
        config_.advertise_host.empty() ? config_.listen_host : config_.advertise_host;
    self_.address.port = config_.listen_port;
  }

  // ---------------------------------------------------------------- API

  const peer_descriptor& self() const { return self_; }
  const transport_counters& counters() const { return counters_; }

  void on_connected(transport::connected_handler h) { on_connected_ = std::move(h); }
  void on_disconnected(transport::disconnected_handler h) { on_disconnected_ = std::move(h); }
  void on_message(channel ch, transport::message_handler h) {
    const auto i = static_cast<std::size_t>(ch);
    if (ch == channel::control || i >= channel_count) return;  // control is ours
    handlers_[i] = std::move(h);
  }

  task<> start() {
    if (started_ || stopping_) throw std::logic_error("tcp_transport: start() called twice");
    started_ = true;
    error_code ec;
    auto address = asio::ip::make_address(config_.listen_host, ec);
    tcp::endpoint endpoint;
    if (!ec) {
      endpoint = tcp::endpoint(address, config_.listen_port);
    } else {
      tcp::resolver resolver(ex_);
      const auto service = std::to_string(config_.listen_port);
      auto [rec, results] = co_await resolver.async_resolve(config_.listen_host, service, use_tuple);
      if (rec || results.empty())
        throw std::system_error(std::error_code(rec), "tcp_transport: resolve " + config_.listen_host);
      endpoint = results.begin()->endpoint();
    }
    const auto fail = [&](const char* what) {
      if (ec) throw std::system_error(std::error_code(ec), std::string("tcp_transport: ") + what +
                                                               " " + endpoint.address().to_string() +
                                                               ":" + std::to_string(endpoint.port()));
    };
    acceptor_.open(endpoint.protocol(), ec);
    fail("open");
    acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    fail("reuse_address");
    acceptor_.bind(endpoint, ec);
    fail("bind");
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    fail("listen");
    self_.address.port = acceptor_.local_endpoint(ec).port();
    fail("local_endpoint");
    if (!uses_tls())
      log("WARNING: INSECURE PLAINTEXT TRANSPORT on " + self_.address.to_string() +
          ": no encryption, no authentication; anyone who reaches this port joins the cluster. "
          "For tests and benchmarks only.");
    group_.spawn("accept", keep(accept_loop()));
  }

  task<> stop() {
    if (!stopping_) {
      stopping_ = true;
      error_code ignored;
      acceptor_.close(ignored);
      for (auto& c : connections_) {
        c->begin_close(disconnect_reason::closed_locally, clock_now());
        c->close_socket();
      }
      auto up = std::exchange(peers_, {});
      for (auto& [id, entry] : up) report_disconnected(id, disconnect_reason::closed_locally);
    }
    co_await group_.stop();
    for (auto& [key, outcome] : std::exchange(dials_, {})) outcome->complete(std::nullopt);
    stopped_ = true;
  }

  // The transport object is going away without stop(): silence the handlers,
  // close everything and let the coroutines wind down on the executor (they
  // hold this object alive until they have).
  void abandon() {
    on_connected_ = nullptr;
    on_disconnected_ = nullptr;
    for (auto& h : handlers_) h = nullptr;
    config_.log = [](const std::string&) {};
    if (stopped_) return;
    stopping_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    for (auto& c : connections_) {
      c->begin_close(disconnect_reason::closed_locally, clock_now());
      c->close_socket();
    }
    peers_.clear();
    asio::co_spawn(ex_, keep(group_.stop()), asio::detached);
  }

  task<std::optional<peer_descriptor>> connect(peer_address addr) {
    if (stopping_ || !started_) co_return std::nullopt;
    if (auto known = connected_at(addr)) co_return known;
    const auto key = addr.to_string();
    std::shared_ptr<dial_outcome> outcome;
    if (auto it = dials_.find(key); it != dials_.end()) {
      outcome = it->second;  // already dialling there: wait for that one
    } else {
      outcome = std::make_shared<dial_outcome>(ex_);
      dials_.emplace(key, outcome);
      group_.spawn("dial " + key, keep(dial(addr, outcome)));
    }
    while (!outcome->done) co_await outcome->wake.async_wait(use_tuple);
    if (outcome->result || !outcome->failure) {
      dial_failures_.erase(key);
    } else {
      if (dial_failures_.size() >= 256 && !dial_failures_.contains(key)) dial_failures_.clear();
      dial_failures_[key] = *outcome->failure;
    }
    co_return outcome->result;
  }

  std::optional<handshake_failure> last_dial_failure(const peer_address& addr) const {
    const auto it = dial_failures_.find(addr.to_string());
    return it == dial_failures_.end() ? std::nullopt : std::optional<handshake_failure>(it->second);
  }

  bool send(const std::string& peer_id, channel ch, const message_body& body) {
    if (!body || ch == channel::control || static_cast<std::size_t>(ch) >= channel_count)
      return false;
    auto it = peers_.find(peer_id);
    if (it == peers_.end()) return false;
    if (frame_header_size + body.size() > config_.max_frame_bytes) {
      log("not sending " + std::to_string(body.size()) + " bytes to " + peer_id +
          ": over max_frame_bytes");
      return false;
    }
    auto& entry = it->second;
    auto& queue = entry.active ? entry.active->queue : entry.held;
    if (queue.size() >= config_.send_queue_limit ||
        queue.bytes + frame_header_size + body.size() > config_.send_queue_bytes_limit) {
      ++counters_.send_queue_drops;
      return false;
    }
    queue.push({encode_frame_header(ch, body.size()), body});
    if (entry.active) entry.active->wake.cancel();
    return true;
  }

  void disconnect(const std::string& peer_id) {
    auto it = peers_.find(peer_id);
    if (it == peers_.end()) return;
    auto conn = std::move(it->second.active);
    peers_.erase(it);
    if (conn) conn->begin_close(disconnect_reason::closed_locally, clock_now());
    report_disconnected(peer_id, disconnect_reason::closed_locally);
  }

  bool is_connected(const std::string& peer_id) const { return peers_.contains(peer_id); }

  // The reader stops before its next frame (one already being read is
  // still delivered); from now on the peer's silence is not counted, and
  // the peer is told (see watch_loop).
  read_hold hold_reading(const std::string& peer_id) {
    bool first = false;
    auto hold = read_holds_.take(peer_id, &first);
    if (first) {
      ++counters_.read_holds;
      for (const auto& c : connections_)
        if (c->state == conn_state::established && c->peer.id == peer_id) start_hold(*c);
    }
    return hold;
  }
  void start_hold(connection& c) {
    if (c.read_held) return;
    c.read_held = true;
    send_hold_notice(c, true);
  }

  // The last hold on a peer is gone: its readers go on.
  void resume_reading(const std::string& peer_id) {
    for (const auto& c : connections_) {
      if (c->peer.id != peer_id || !c->read_held) continue;
      c->read_held = false;
      c->last_received = clock_now();  // its silence was ours
      send_hold_notice(*c, false);
      c->read_wake.cancel();
    }
  }

  std::size_t fullest_send_queue() const {
    std::size_t most = 0;
    for (const auto& [id, entry] : peers_)
      most = std::max(most, entry.active ? entry.active->queue.size() : entry.held.size());
    return most;
  }

  std::size_t send_queue_limit() const { return config_.send_queue_limit; }

  void set_cluster_secrets(std::string primary, std::vector<std::string> accepted) {
    if (config_.security != transport_security::psk)
      throw std::logic_error("tcp_transport: cluster secrets are for psk mode");
    try {
      keys_ = detail::make_keyring(primary, accepted);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("tcp_transport: ") + e.what());
    }
    log("keyring replaced: " + std::to_string(keys_->accepted.size()) + " key(s) accepted, dialling with " +
        keys_->primary.identity);
  }

  void reload_certificates() {
    if (config_.security != transport_security::certificates)
      throw std::logic_error("tcp_transport: certificates are for certificates mode");
    tls_context_ = detail::make_certificate_context(config_.certificates, config_.node_id);
    log("certificates reloaded from " + config_.certificates.certificate.string());
  }

  std::vector<std::string> connected_peers() const {
    std::vector<std::string> out;
    out.reserve(peers_.size());
    for (const auto& [id, entry] : peers_) out.push_back(id);
    return out;
  }

 private:
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
  task<bool> sleep_for(duration d) {
    asio::steady_timer timer(ex_, d);
    auto [ec] = co_await timer.async_wait(use_tuple);
    co_return !ec;
  }

  void log(const std::string& line) const {
    const auto text = log_line(self_.id, "tcp", line);
    try {
      static const log_sink fallback = stderr_log_sink();
      if (config_.log) config_.log(text);
      else fallback(text);
    } catch (...) {
    }
  }

  bool uses_tls() const { return config_.security != transport_security::insecure_plaintext; }

  std::shared_ptr<connection> make_connection(tcp::socket socket, bool outbound) {
    return std::make_shared<connection>(std::move(socket), tls_context_, uses_tls(), outbound);
  }

  // Counts a refused handshake; logs at most one line per reason a second,
  // so a flood of bad connections cannot flood the log.
  void note_handshake_failure(handshake_failure reason, const std::string& line) {
    ++counters_.handshake_failures;
    const auto i = static_cast<std::size_t>(reason);
    ++counters_.handshake_failures_by_reason[i];
    auto& limit = failure_log_[i];
    if (!limit.allow(clock_now(), std::chrono::seconds(1))) return;
    std::string more;
    if (const auto held_back = limit.take_held_back(); held_back > 0)
      more = " (and " + std::to_string(held_back) + " more " + std::string(to_string(reason)) +
             " failures since the last line)";
    log("handshake refused [" + std::string(to_string(reason)) + "]: " + line + more);
  }

  // Ids come from peers: escaped, so that one cannot forge log lines.
  static std::string describe(const connection& c) {
    return c.peer.id.empty() ? c.remote : detail::printable(c.peer.id) + " (" + c.remote + ")";
  }
  std::optional<peer_descriptor> connected_at(const peer_address& addr) const {
    for (const auto& [id, entry] : peers_) {
      if (entry.descriptor.address == addr) return entry.descriptor;
      if (entry.active && entry.active->dialed == addr) return entry.descriptor;
    }
    return std::nullopt;
  }

  bool handshake_pending(const std::string& peer_id) const {
    return std::any_of(connections_.begin(), connections_.end(), [&](const auto& c) {
      return c->state == conn_state::hello_received && c->peer.id == peer_id;
    });
  }

  // Calls a user handler; one that throws is logged, never fatal to the
  // transport's loops.
  template <class Handler, class... Args>
  void call_handler(const char* what, const Handler& h, Args&&... args) {
    if (!h) return;
    try {
      h(std::forward<Args>(args)...);
    } catch (const std::exception& e) {
      log(std::string(what) + " handler threw: " + e.what());
    } catch (...) {
      log(std::string(what) + " handler threw");
    }
  }

  void report_connected(const peer_descriptor& peer, bool inbound) {
    call_handler("connected", on_connected_, peer, inbound);
  }

  void report_disconnected(const std::string& peer_id, disconnect_reason why) {
    call_handler("disconnected", on_disconnected_, peer_id, why);
  }

  void complete_dial(connection& c, std::optional<peer_descriptor> result) {
    if (!c.outcome) return;
    settle_dial(*c.dialed, c.outcome, std::move(result));
    c.outcome.reset();
  }

  void settle_dial(const peer_address& addr, const std::shared_ptr<dial_outcome>& outcome,
                   std::optional<peer_descriptor> result) {
    auto it = dials_.find(addr.to_string());
    if (it != dials_.end() && it->second == outcome) dials_.erase(it);
    outcome->complete(std::move(result));
  }

  // ---------------------------------------------------------------- loops

  task<> accept_loop() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(use_tuple);
      if (stopping_ || ec == asio::error::operation_aborted) co_return;
      if (ec) {
        // Out of descriptors and the like: pause rather than spin.
        log("accept failed: " + ec.message());
        if (!co_await sleep_for(duration{100})) co_return;
        continue;
      }
      error_code aec;
      const auto endpoint = socket.remote_endpoint(aec);
      auto source = aec ? std::string("?") : source_of(endpoint.address());
      if (!admit(source)) {
        socket.close(aec);  // before any buffer is allocated for it
        continue;
      }
      ++pending_inbound_;
      ++pending_by_source_[source];
      auto conn = make_connection(std::move(socket), false);
      conn->accepted_at = clock_now();
      conn->source_address = std::move(source);
      conn->counted_pending = true;
      group_.spawn("inbound connection", keep(run_connection(conn)));
    }
  }

  task<> dial(peer_address addr, std::shared_ptr<dial_outcome> outcome) {
    tcp::socket socket(ex_);
    bool connected = false;
    try {
      connected = co_await dial_socket(socket, addr);
    } catch (...) {
      // Cancelled by stop().
    }
    if (!connected) {
      if (!stopping_) ++counters_.connect_failures;
      settle_dial(addr, outcome, std::nullopt);
      co_return;
    }
    auto conn = make_connection(std::move(socket), true);
    conn->outcome = std::move(outcome);
    conn->dialed = addr;
    co_await run_connection(conn);
  }

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

  task<std::optional<std::vector<tcp::endpoint>>> resolve(const peer_address& addr, duration limit) {
    if (*lookups_in_flight_ >= max_lookups_in_flight) {
      log("cannot resolve " + detail::printable(addr.host) + ": " + std::to_string(max_lookups_in_flight) +
          " lookups already in flight");
      co_return std::nullopt;
    }
    auto lookup = std::make_shared<name_lookup>(ex_);
    lookup->done.expires_after(limit);
    ++*lookups_in_flight_;
    asio::co_spawn(
        ex_,
        [lookup, in_flight = lookups_in_flight_, host = addr.host, service = std::to_string(addr.port),
         ex = ex_]() -> task<> {
          tcp::resolver resolver(ex);
          auto [rec, results] = co_await resolver.async_resolve(host, service, use_tuple);
          --*in_flight;
          lookup->completed = true;
          lookup->ec = rec;
          for (const auto& r : results) lookup->endpoints.push_back(r.endpoint());
          lookup->done.cancel();
        },
        asio::detached);
    co_await lookup->done.async_wait(use_tuple);
    if (!lookup->completed) {
      if (!stopping_) log("cannot resolve " + detail::printable(addr.host) + " within the connect timeout");
      co_return std::nullopt;
    }
    if (lookup->ec || lookup->endpoints.empty()) {
      log("cannot resolve " + detail::printable(addr.host) + ": " + lookup->ec.message());
      co_return std::nullopt;
    }
    co_return std::move(lookup->endpoints);
  }

  task<bool> dial_socket(tcp::socket& socket, const peer_address& addr) {
    error_code ec;
    std::vector<tcp::endpoint> endpoints;
    const auto started = clock_now();
    auto address = asio::ip::make_address(addr.host, ec);
    if (!ec) {
      endpoints.emplace_back(address, addr.port);
    } else {
      auto found = co_await resolve(addr, config_.connect_timeout);
      if (!found) co_return false;
      endpoints = std::move(*found);
    }
    const auto deadline = started + config_.connect_timeout;
    for (const auto& endpoint : endpoints) {
      const auto left = deadline - clock_now();
      if (left <= duration{0}) break;
      if (socket.is_open()) socket.close(ec);
      auto r = co_await (socket.async_connect(endpoint, use_tuple) || sleep_for(left));
      if (r.index() == 0 && !std::get<0>(std::get<0>(r))) co_return true;
    }
    co_return false;
  }

  task<> run_connection(std::shared_ptr<connection> conn) {
    connections_.push_back(conn);
    error_code ec;
    conn->socket().set_option(tcp::no_delay(true), ec);
    const auto endpoint = conn->socket().remote_endpoint(ec);
    conn->remote = ec ? std::string("?") : endpoint.address().to_string() + ":" +
                                                std::to_string(endpoint.port());
    conn->last_received = conn->last_sent = clock_now();
    auto reason = disconnect_reason::closed_locally;
    try {
      const bool shook = co_await handshake_within_timeout(conn);
      release_pending(*conn);
      if (shook && !stopping_) {
        establish(conn);
        auto r = co_await (read_loop(conn) || write_loop(conn) || watch_loop(conn));
        reason = std::visit([](disconnect_reason why) { return why; }, r);
      }
    } catch (const std::exception& e) {
      release_pending(*conn);
      // Cancellation by stop(); anything else is a bug worth a line.
      if (!stopping_) log("connection to " + describe(*conn) + " failed: " + e.what());
      reason = disconnect_reason::io_error;
    }
    finish(conn, reason);
  }

  // The caps count sources by IPv4 address and by IPv6 /64 (one host
  // usually owns a whole /64).
  static std::string source_of(const asio::ip::address& a) {
    if (a.is_v6() && !a.to_v6().is_v4_mapped()) {
      auto bytes = a.to_v6().to_bytes();
      std::fill(bytes.begin() + 8, bytes.end(), 0);
      return asio::ip::address_v6(bytes).to_string() + "/64";
    }
    return a.is_v6() ? asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).to_string() : a.to_string();
  }

  // Room for one more inbound handshake from `source`? When a cap is full,
  // the oldest connection that has not sent a byte yet (from that source,
  // or from any source for the total cap) makes room: silent sockets can
  // then only push out each other, never a peer that is talking.
  bool admit(const std::string& source) {
    const auto it = pending_by_source_.find(source);
    const std::size_t from_source = it == pending_by_source_.end() ? 0 : it->second;
    const bool source_full = from_source >= config_.max_pending_handshakes_per_address;
    const bool total_full = pending_inbound_ >= config_.max_pending_handshakes;
    if (!source_full && !total_full) return true;
    std::shared_ptr<connection> oldest;
    for (const auto& c : connections_)
      if (c->counted_pending && c->silent && (!source_full || c->source_address == source) &&
          (!oldest || c->accepted_at < oldest->accepted_at))
        oldest = c;
    if (oldest) {
      oldest->evicted = true;
      release_pending(*oldest);
      oldest->close_socket();  // its wait for a first byte ends: counted over_capacity
      return true;
    }
    note_handshake_failure(handshake_failure::over_capacity,
                           "too many connections in their handshake (" + std::to_string(pending_inbound_) +
                               " in all, " + std::to_string(from_source) + " from " + source + ")");
    return false;
  }

  void release_pending(connection& conn) {
    if (!conn.counted_pending) return;
    conn.counted_pending = false;
    --pending_inbound_;
    auto it = pending_by_source_.find(conn.source_address);
    if (it != pending_by_source_.end() && --it->second == 0) pending_by_source_.erase(it);
  }

  void remember_own_nonce(const handshake_nonce& n) {
    own_nonces_[own_nonces_next_] = n;
    own_nonces_next_ = (own_nonces_next_ + 1) % own_nonces_.size();
    own_nonces_size_ = std::min(own_nonces_size_ + 1, own_nonces_.size());
  }
  bool is_own_nonce(const handshake_nonce& n) const {
    const auto end = own_nonces_.begin() + static_cast<std::ptrdiff_t>(own_nonces_size_);
    return std::find(own_nonces_.begin(), end, n) != end;
  }

  // The whole handshake, TLS included, within handshake_timeout. On timeout
  // the socket is closed, which ends whatever read or write was pending.
  task<bool> handshake_within_timeout(std::shared_ptr<connection> conn) {
    auto r = co_await (handshake(conn) || handshake_deadline(conn));
    std::optional<handshake_error> failure;
    if (r.index() == 0) failure = std::move(std::get<0>(r));
    else failure = handshake_error(handshake_failure::timeout, "timed out");
    if (!failure) co_return true;
    if (conn->outcome) conn->outcome->failure = failure->reason;
    if (!stopping_) note_handshake_failure(failure->reason, "with " + describe(*conn) + ": " + failure->detail);
    co_return false;
  }

  task<> handshake_deadline(std::shared_ptr<connection> conn) {
    const bool expired = co_await sleep_for(config_.handshake_timeout);
    // The timer may fire in the same turn as the handshake succeeds: only
    // a handshake still under way is cut off.
    if (expired && conn->state == conn_state::handshaking) conn->close_socket();
    co_return;
  }

  // TLS first (authenticates the peer as a holder of a cluster key or of a
  // certificate from the cluster's CA, and encrypts everything after), then
  // the hellos: the dialler's first, then the accepting side's (or its id
  // refusal). Returns why it failed, or nullopt.
  task<std::optional<handshake_error>> handshake(std::shared_ptr<connection> conn) {
    using F = handshake_failure;
    try {
      if (!conn->outbound) {
        // Nothing more is allocated for an inbound peer until it sends a
        // byte; until then it may be evicted to make room (see admit()).
        conn->silent = true;
        auto [wec] = co_await conn->raw.async_wait(tcp::socket::wait_read, use_tuple);
        conn->silent = false;
        if (conn->evicted) co_return handshake_error(F::over_capacity, "evicted while silent, to make room");
        if (wec) co_return handshake_error(F::tls, "closed before the handshake: " + wec.message());
      }
      if (conn->tls) {
        conn->tls_session.keys = keys_;
        conn->start_tls();
        SSL* ssl = conn->stream->native_handle();
        detail::attach_session(ssl, &conn->tls_session);
        if (conn->outbound && config_.security == transport_security::psk) detail::dial_with_key_only(ssl);
        const auto side = conn->outbound ? tls_stream::client : tls_stream::server;
        auto [ec] = co_await conn->stream->async_handshake(side, use_tuple);
        if (ec) {
          auto f = detail::classify_tls_failure(ssl, conn->tls_session, ec.message());
          co_return handshake_error(f.reason, std::move(f.detail));
        }
        // A server that ignored our key and sent a certificate instead has
        // been refused by the verify callback; this makes sure of it.
        if (config_.security == transport_security::psk && !SSL_session_reused(ssl))
          co_return handshake_error(F::tls, "the peer did not use the cluster key");
        auto tiebreak = detail::export_tiebreak(ssl);
        if (!tiebreak) co_return handshake_error(F::tls, "cannot export keying material");
        conn->tiebreak = *tiebreak;
      }
      // The dialler speaks first; the accepting side answers with its own
      // hello, or with a refusal when the dialler's id is taken, so that
      // the dialler learns why instead of seeing a closed connection.
      const auto own_nonce = random_nonce();
      remember_own_nonce(own_nonce);
      auto hello_body = encode_body(make_hello(hello_message{protocol_version, self_, own_nonce}));
      if (conn->outbound) {
        const bool sent = co_await write_direct(conn, hello_body);
        if (!sent) co_return handshake_error(conn->tls ? F::tls : F::protocol, "cannot send hello");
      }

      auto in = co_await read_frame(conn, handshake_max_frame_bytes);
      if (in.st != frame_in::status::ok) {
        // Over TLS, a peer that refused our certificate or key says so with
        // an alert that ends this read.
        const auto reason = in.st == frame_in::status::bad_frame || !conn->tls ? F::protocol : F::tls;
        co_return handshake_error(reason, "reading hello: " + in.detail);
      }
      std::optional<hello_message> peer_hello;
      std::optional<id_refusal> refusal;
      if (in.ch == channel::control) {
        if (auto decoded = decode_cbor(*in.body, handshake_cbor_limits)) {
          peer_hello = parse_hello(*decoded);
          if (!peer_hello && conn->outbound) refusal = parse_id_refusal(*decoded);
        } else {
          ++counters_.bad_frames;
        }
      }
      if (refusal) co_return refused_by_peer(*conn, *refusal);
      if (!peer_hello) co_return handshake_error(F::protocol, "malformed hello");
      const auto& claimed = peer_hello->self;
      if (config_.security == transport_security::certificates &&
          !detail::peer_certificate_names(conn->stream->native_handle(), claimed.id))
        co_return handshake_error(F::identity, "claims id '" + detail::printable(claimed.id) +
                                                   "', which its certificate does not name");
      const bool own_id = claimed.id == self_.id && !is_own_nonce(peer_hello->nonce);
      const auto taken = own_id ? peers_.end() : peers_.find(claimed.id);
      const bool in_use = taken != peers_.end() && taken->second.descriptor.address != claimed.address;
      // Copied: the entry may go while we write below.
      const auto holder = own_id ? self_.address.to_string()
                                 : in_use ? taken->second.descriptor.address.to_string() : std::string();
      if (!conn->outbound) {
        auto answer = hello_body;
        if (own_id || in_use) {
          id_refusal refusal_out;
          refusal_out.reason = own_id ? id_refusal::why::own_id : id_refusal::why::in_use;
          refusal_out.holder = holder;
          answer = encode_body(make_id_refusal(refusal_out));
        }
        const bool sent = co_await write_direct(conn, std::move(answer));
        if (!sent) co_return handshake_error(conn->tls ? F::tls : F::protocol, "cannot send hello");
      }
      if (peer_hello->version != protocol_version)
        co_return handshake_error(F::protocol, "protocol version " + std::to_string(peer_hello->version) +
                                                   ", expected " + std::to_string(protocol_version));
      // Our own nonce back: this node reached itself. Any other nonce: a
      // second process runs under this node's id.
      if (claimed.id == self_.id && !own_id) co_return handshake_error(F::self, "connection to self refused");
      if (own_id)
        co_return handshake_error(F::duplicate_id, "duplicate node id '" + detail::printable(self_.id) +
                                                       "': a node listening at " +
                                                       detail::printable(claimed.address.to_string()) +
                                                       " uses it too; give every node its own id");
      if (in_use)
        co_return handshake_error(F::id_in_use, "refused a second node with the id '" +
                                                    detail::printable(claimed.id) + "' (advertising " +
                                                    detail::printable(claimed.address.to_string()) +
                                                    "): the node at " + holder + " is connected under it");
      conn->peer = peer_hello->self;
      if (!conn->tls) conn->tiebreak = conn->outbound ? own_nonce : peer_hello->nonce;
      conn->state = conn_state::hello_received;
      co_return std::nullopt;
    } catch (const std::exception& e) {
      co_return handshake_error(F::protocol, e.what());
    }
  }

  // The accepting side answered our hello with an id refusal.
  handshake_error refused_by_peer(connection& conn, const id_refusal& r) const {
    const auto holder = detail::printable(r.holder);
    // "I am you": with certificates, believed only from a node whose
    // certificate names this node's id (another member cannot say it).
    if (r.reason == id_refusal::why::own_id && config_.security == transport_security::certificates &&
        !detail::peer_certificate_names(conn.stream->native_handle(), self_.id))
      return handshake_error(handshake_failure::identity,
                             "refused this node as a duplicate of its id, which its certificate does not name");
    if (r.reason == id_refusal::why::own_id)
      return handshake_error(handshake_failure::duplicate_id,
                             "duplicate node id '" + detail::printable(self_.id) + "': the node at " + holder +
                                 " uses it too; give every node its own id");
    return handshake_error(handshake_failure::id_in_use,
                           "refused this node: another node with the id '" +
                               detail::printable(self_.id) + "' is connected to it, listening at " + holder +
                               " (a node that just restarted at a new address gets in once its old "
                               "connection times out)");
  }

  void establish(const std::shared_ptr<connection>& conn) {
    conn->state = conn_state::established;
    conn->opened = true;
    ++counters_.connections_opened;
    const auto id = conn->peer.id;
    auto it = peers_.find(id);
    if (it == peers_.end()) {
      peers_.emplace(id, peer_entry{conn->peer, conn, {}, {}});
      complete_dial(*conn, conn->peer);
      report_connected(conn->peer, !conn->outbound);
      return;
    }
    auto& entry = it->second;
    if (!entry.active) {
      // The previous connection ended while this one was finishing its
      // handshake: the peer never went down, so nothing is reported.
      entry.active = conn;
      entry.descriptor = conn->peer;
      conn->queue = std::exchange(entry.held, {});
      complete_dial(*conn, entry.descriptor);
      return;
    }
    const auto now = clock_now();
    log("two connections with " + detail::printable(id) + " (" + (conn->outbound ? "dialled" : "accepted") + " and " +
        (entry.active->outbound ? "dialled" : "accepted") + "): keeping the " +
        (dialled_before(*conn, *entry.active, self_.id) ? "new" : "old") + " one");
    if (dialled_before(*conn, *entry.active, self_.id)) {
      auto loser = std::exchange(entry.active, conn);
      conn->queue = std::exchange(loser->queue, {});
      loser->begin_close(disconnect_reason::replaced, now);
    } else {
      conn->begin_close(disconnect_reason::replaced, now);
    }
    complete_dial(*conn, entry.descriptor);
  }

  void finish(const std::shared_ptr<connection>& conn, disconnect_reason loop_reason) {
    const auto why = conn->closing.value_or(loop_reason);
    const auto was = std::exchange(conn->state, conn_state::closed);
    conn->close_socket();
    std::erase(connections_, conn);
    complete_dial(*conn, std::nullopt);
    if (conn->opened) ++counters_.connections_closed;
    const auto& id = conn->peer.id;
    if (was == conn_state::established) {
      auto it = peers_.find(id);
      if (it == peers_.end() || it->second.active != conn) return;  // replaced or disconnected
      auto& entry = it->second;
      entry.active = nullptr;
      if (!stopping_ && handshake_pending(id)) {
        // A newer connection from the same node is finishing its handshake
        // (it closed this one as the loser of a simultaneous dial, or it
        // restarted): wait for it instead of reporting a flap.
        entry.held = std::exchange(conn->queue, {});
        entry.deferred = why;
        return;
      }
      peers_.erase(it);
      report_disconnected(id, why);
    } else if (was == conn_state::hello_received) {
      auto it = peers_.find(id);
      if (it != peers_.end() && !it->second.active && !handshake_pending(id)) {
        const auto deferred = it->second.deferred;
        peers_.erase(it);
        report_disconnected(id, deferred);
      }
    }
  }

  task<disconnect_reason> read_loop(std::shared_ptr<connection> conn) {
    try {
      for (;;) {
        // A receive budget (hold_reading): the peer's frames wait in TCP.
        // Its silence meanwhile is ours: the watchdog does not count it.
        while (read_holds_.held(conn->peer.id) && !conn->closing) {
          start_hold(*conn);  // (already, unless it connected while held)
          conn->read_wake.expires_at(asio::steady_timer::time_point::max());
          co_await conn->read_wake.async_wait(use_tuple);
        }
        auto in = co_await read_frame(conn, config_.max_frame_bytes);
        switch (in.st) {
          case frame_in::status::ok: break;
          case frame_in::status::closed: co_return disconnect_reason::closed_by_peer;
          case frame_in::status::failed: co_return disconnect_reason::io_error;
          case frame_in::status::bad_frame:
            log("closing connection to " + describe(*conn) + ": " + in.detail);
            co_return disconnect_reason::protocol_error;
        }
        if (in.ch == channel::control) {
          // A heartbeat (hearing it was the point) or a hold notice; it
          // must still be CBOR.
          auto control = decode_cbor(*in.body, handshake_cbor_limits);
          if (!control) {
            ++counters_.bad_frames;
            log("closing connection to " + describe(*conn) + ": bad frame: undecodable control body");
            co_return disconnect_reason::protocol_error;
          }
          if (auto held = parse_hold_notice(*control)) {
            if (conn->held_by_peer && !*held) conn->hold_ended_at = clock_now();
            conn->held_by_peer = *held;
          }
          continue;
        }
        if (!deliver(*conn, in.ch, byte_slice(std::move(in.body)))) {
          ++counters_.bad_frames;
          log("closing connection to " + describe(*conn) + ": bad frame: undecodable body on channel " +
              std::to_string(static_cast<int>(in.ch)));
          co_return disconnect_reason::protocol_error;
        }
      }
    } catch (...) {
      co_return disconnect_reason::closed_locally;  // cancelled
    }
  }

  // Outside the queue and its limits: one slot holding the latest state,
  // written before the next frames (so a hold and its release made while
  // the writer is busy go out as the release alone, never out of order).
  void send_hold_notice(connection& conn, bool held) {
    if (conn.closing) return;
    conn.notice_due = held;
    conn.wake.cancel();
  }

  // False when the handler found the bytes are not a message.
  bool deliver(const connection& conn, channel ch, const byte_slice& body) {
    // A connection we are closing ourselves delivers nothing more; a
    // replaced one still does (its peer is connected) while it drains.
    if (conn.closing == disconnect_reason::closed_locally) return true;
    if (!peers_.contains(conn.peer.id)) return true;
    // No handler: nobody listens on this channel here.
    const auto& h = handlers_[static_cast<std::size_t>(ch)];
    if (!h) return true;
    try {
      return h(conn.peer.id, body);
    } catch (const std::exception& e) {
      log(std::string("message handler threw: ") + e.what());
    } catch (...) {
      log("message handler threw");
    }
    return true;
  }

  task<disconnect_reason> write_loop(std::shared_ptr<connection> conn) {
    try {
      for (;;) {
        while (!conn->queue.empty() || conn->notice_due) {
          std::vector<queued_frame> batch;
          std::size_t bytes = 0;
          if (conn->notice_due) {  // our hold state first (send_hold_notice)
            const auto body = encode_body(make_hold_notice(*conn->notice_due));
            conn->notice_due.reset();
            batch.push_back({encode_frame_header(channel::control, body.size()), body});
          }
          while (!conn->queue.empty() && batch.size() < write_batch_frames && bytes < write_batch_bytes) {
            batch.push_back(conn->queue.pop());
            bytes += batch.back().body.size();
          }
          if (!co_await write_frames(conn, batch)) co_return disconnect_reason::io_error;
        }
        if (conn->closing) {
          if (!conn->write_shut) {
            conn->write_shut = true;
            error_code ignored;
            // A TCP half-close (no close_notify): the peer reads it as the
            // end of the stream (SSL_OP_IGNORE_UNEXPECTED_EOF).
            conn->socket().shutdown(tcp::socket::shutdown_send, ignored);
          }
          conn->wake.expires_at(asio::steady_timer::time_point::max());
          co_await conn->wake.async_wait(use_tuple);  // until the reader or watchdog ends it
          continue;
        }
        const auto idle = clock_now() - conn->last_sent;
        if (idle >= config_.heartbeat_interval) {
          // (Named, not a braced temporary: GCC 12 destroys aggregate
          // temporaries in a co_await expression twice.)
          const queued_frame heartbeat{
              encode_frame_header(channel::control, heartbeat_body().size()), heartbeat_body()};
          if (!co_await write_frame(conn, heartbeat)) co_return disconnect_reason::io_error;
          continue;
        }
        conn->wake.expires_after(config_.heartbeat_interval - idle);
        co_await conn->wake.async_wait(use_tuple);
      }
    } catch (...) {
      co_return disconnect_reason::closed_locally;  // cancelled
    }
  }

  task<disconnect_reason> watch_loop(std::shared_ptr<connection> conn) {
    try {
      const auto limit = config_.heartbeat_timeout;
      for (;;) {
        const auto now = clock_now();
        duration next;
        if (conn->closing) {
          // Draining: give the peer until the deadline to close its side.
          if (now - conn->closing_since >= limit) co_return *conn->closing;
          next = conn->closing_since + limit;
        } else {
          if (!conn->read_held && now - conn->last_received >= limit) {
            ++counters_.heartbeat_timeouts;
            log("nothing heard from " + describe(*conn) + " for " +
                std::to_string(limit.count()) + " ms: closing");
            co_return disconnect_reason::heartbeat_timeout;
          }
          // A peer that holds its reading of us (its queued work from us is
          // over its budget) gets longer before a stalled write counts as
          // "not reading"; its heartbeats still must come.
          // Timed from the write's start, never reset by a notice: a peer
          // that sends notices and never reads is closed all the same, at
          // most six timeouts after the write began.
          const bool grace = conn->held_by_peer || (conn->hold_ended_at && now - *conn->hold_ended_at < limit);
          const auto write_limit = grace ? held_write_timeout_factor * limit : limit;
          if (conn->write_started && now - *conn->write_started >= write_limit) {
            ++counters_.heartbeat_timeouts;
            log(describe(*conn) + " has not read for " + std::to_string(write_limit.count()) +
                " ms: closing");
            co_return disconnect_reason::heartbeat_timeout;
          }
          next = conn->read_held ? now + limit : conn->last_received + limit;
          if (conn->write_started) next = std::min(next, *conn->write_started + write_limit);
          // A close may begin while we sleep; look again then.
          next = std::min(next, now + std::max(config_.heartbeat_interval, duration{1}));
        }
        if (!co_await sleep_for(std::max(next - now, duration{1})))
          co_return disconnect_reason::closed_locally;
      }
    } catch (...) {
      co_return disconnect_reason::closed_locally;  // cancelled
    }
  }

  // ---------------------------------------------------------------- frames

  // The same awaitable type either way; not coroutines themselves, so the
  // hot path pays no extra frame. The caller keeps `conn` and the buffers
  // alive until the operation completes.
  static task<std::tuple<error_code, std::size_t>> read_some(connection& conn, asio::mutable_buffer b) {
    if (conn.tls) return conn.stream->async_read_some(b, use_tuple);
    return conn.socket().async_read_some(b, use_tuple);
  }
  static task<std::tuple<error_code, std::size_t>> write_all(connection& conn,
                                                             const std::vector<asio::const_buffer>& b) {
    if (conn.tls) return asio::async_write(*conn.stream, b, use_tuple);
    return asio::async_write(conn.socket(), b, use_tuple);
  }

  // Makes at least `need` bytes (at most the buffer's size) available in
  // the connection's read buffer. One read_some usually brings many small
  // frames at once: the reader then decodes them without another syscall.
  task<error_code> fill(std::shared_ptr<connection> conn, std::size_t need) {
    auto& b = conn->read_buffer;
    if (conn->read_end - conn->read_begin >= need) co_return error_code{};
    if (conn->read_begin > 0) {  // compact: the unread tail to the front
      std::memmove(b.data(), b.data() + conn->read_begin, conn->read_end - conn->read_begin);
      conn->read_end -= conn->read_begin;
      conn->read_begin = 0;
    }
    while (conn->read_end < need) {
      auto [ec, n] = co_await read_some(*conn, asio::buffer(b.data() + conn->read_end, b.size() - conn->read_end));
      if (ec) co_return ec;
      conn->read_end += n;
      conn->last_received = clock_now();
    }
    co_return error_code{};
  }

  // One frame, its body as received (copied out of the read buffer into a
  // buffer of its own, which the layers above may keep a slice of).
  task<frame_in> read_frame(std::shared_ptr<connection> conn, std::size_t max_frame_bytes) {
    frame_in in;
    const auto failed = [&](const error_code& ec) {
      const bool eof = ec == asio::error::eof || ec == asio::ssl::error::stream_truncated;
      in.st = eof ? frame_in::status::closed : frame_in::status::failed;
      in.detail = eof ? "closed by peer" : ec.message();
      return std::move(in);
    };
    const auto bad = [&](std::string detail) {
      ++counters_.bad_frames;
      in.st = frame_in::status::bad_frame;
      in.detail = std::move(detail);
      return std::move(in);
    };
    // Small during the handshake (an unauthenticated peer costs ~1 KiB);
    // grown once established. resize() keeps bytes already buffered.
    const auto want = std::min(read_buffer_size, max_frame_bytes);
    if (conn->read_buffer.size() < want) conn->read_buffer.resize(want);
    // The length is judged as soon as its 4 bytes are in (usually the whole
    // header comes in the same read).
    if (auto ec = co_await fill(conn, 4)) co_return failed(ec);
    frame_header_bytes header{};
    const auto copy_header = [&] {
      const auto avail = std::min(conn->read_end - conn->read_begin, header.size());
      std::memcpy(header.data(), conn->read_buffer.data() + conn->read_begin, avail);
    };
    copy_header();
    auto parsed = parse_frame_length(header, max_frame_bytes);
    if (parsed) {
      if (auto ec = co_await fill(conn, frame_header_size)) co_return failed(ec);
      copy_header();
      parsed = parse_frame_header(header, max_frame_bytes);
    }
    if (!parsed)
      co_return bad("bad frame: " + std::string(to_string(parsed.error)) + " (length " +
                    std::to_string(parsed.length) + ")");
    conn->read_begin += frame_header_size;
    // The length was checked above; only now is a large body allocated.
    const std::size_t size = parsed.header.body_size;
    std::vector<std::uint8_t> large;
    if (size <= conn->read_buffer.size()) {
      if (auto ec = co_await fill(conn, size)) co_return failed(ec);
      const auto* first = conn->read_buffer.data() + conn->read_begin;
      large.assign(first, first + size);
      conn->read_begin += size;
    } else {
      large.resize(size);
      std::size_t got = conn->read_end - conn->read_begin;
      std::memcpy(large.data(), conn->read_buffer.data() + conn->read_begin, got);
      conn->read_begin = conn->read_end = 0;
      while (got < size) {
        const auto want = std::min(size - got, read_chunk);
        auto [rec, m] = co_await read_some(*conn, asio::buffer(large.data() + got, want));
        if (rec) co_return failed(rec);
        got += m;
        conn->last_received = clock_now();
      }
    }
    ++counters_.frames_received;
    counters_.bytes_received += frame_header_size + size;
    in.ch = parsed.header.ch;
    in.body = share_bytes(std::move(large));
    co_return in;
  }

  task<bool> write_frames(std::shared_ptr<connection> conn, const std::vector<queued_frame>& frames) {
    std::vector<asio::const_buffer> buffers;
    buffers.reserve(3 * frames.size());
    for (const auto& f : frames) {
      buffers.push_back(asio::buffer(f.header));
      buffers.push_back(asio::buffer(*f.body.head));
      if (!f.body.tail.empty()) buffers.push_back(asio::buffer(f.body.tail.bytes().data(), f.body.tail.size()));
    }
    conn->write_started = clock_now();
    auto [ec, n] = co_await write_all(*conn, buffers);
    conn->write_started.reset();
    if (ec) co_return false;
    counters_.frames_sent += frames.size();
    counters_.bytes_sent += n;
    conn->last_sent = clock_now();
    co_return true;
  }

  task<bool> write_frame(std::shared_ptr<connection> conn, const queued_frame& frame) {
    const std::vector<queued_frame> one{frame};
    co_return co_await write_frames(std::move(conn), one);
  }

  // Handshake frames go out before the writer runs.
  task<bool> write_direct(std::shared_ptr<connection> conn, message_body body) {
    const queued_frame frame{encode_frame_header(channel::control, body.size()), std::move(body)};
    const bool written = co_await write_frame(std::move(conn), frame);
    co_return written;
  }

  tcp_transport_config config_;
  executor ex_;
  task_group group_;
  tcp::acceptor acceptor_;
  peer_descriptor self_;
  bool started_ = false;
  bool stopping_ = false;
  bool stopped_ = false;

  transport::connected_handler on_connected_;
  transport::disconnected_handler on_disconnected_;
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

class tcp_transport_handle final : public tcp_transport {
 public:
  tcp_transport_handle(tcp_transport_config config, scheduler& sched)
      : impl_(std::make_shared<tcp_transport_impl>(std::move(config), sched.get_executor())) {}
  ~tcp_transport_handle() override { impl_->abandon(); }
  tcp_transport_handle(const tcp_transport_handle&) = delete;
  tcp_transport_handle& operator=(const tcp_transport_handle&) = delete;

  const peer_descriptor& self() const override { return impl_->self(); }
  void on_connected(connected_handler h) override { impl_->on_connected(std::move(h)); }
  void on_disconnected(disconnected_handler h) override { impl_->on_disconnected(std::move(h)); }
  void on_message(channel ch, message_handler h) override { impl_->on_message(ch, std::move(h)); }
  // Each coroutine holds the implementation alive while it runs.
  task<> start() override {
    auto impl = impl_;
    co_await impl->start();
  }
  task<> stop() override {
    auto impl = impl_;
    co_await impl->stop();
  }
  task<std::optional<peer_descriptor>> connect(peer_address addr) override {
    auto impl = impl_;
    auto result = co_await impl->connect(addr);
    co_return result;
  }
  bool send(const std::string& peer_id, channel ch, const message_body& body) override {
    return impl_->send(peer_id, ch, body);
  }
  void disconnect(const std::string& peer_id) override { impl_->disconnect(peer_id); }
  bool is_connected(const std::string& peer_id) const override {
    return impl_->is_connected(peer_id);
  }
  std::vector<std::string> connected_peers() const override { return impl_->connected_peers(); }
  std::size_t fullest_send_queue() const override { return impl_->fullest_send_queue(); }
  std::optional<handshake_failure> last_dial_failure(const peer_address& addr) const override {
    return impl_->last_dial_failure(addr);
  }
  std::size_t send_queue_limit() const override { return impl_->send_queue_limit(); }
  read_hold hold_reading(const std::string& peer_id) override { return impl_->hold_reading(peer_id); }
  const transport_counters& counters() const override { return impl_->counters(); }
  void set_cluster_secrets(std::string primary, std::vector<std::string> accepted) override {
    impl_->set_cluster_secrets(std::move(primary), std::move(accepted));
  }
  void reload_certificates() override { impl_->reload_certificates(); }

 private:
  std::shared_ptr<tcp_transport_impl> impl_;
};

}  // namespace

std::string_view to_string(transport_security s) noexcept {
  switch (s) {
    case transport_security::psk: return "psk";
    case transport_security::certificates: return "certificates";
    case transport_security::insecure_plaintext: return "insecure_plaintext";
  }
  return "unknown";
}

std::unique_ptr<tcp_transport> make_tcp_transport(tcp_transport_config config, scheduler& sched) {
  return std::make_unique<tcp_transport_handle>(std::move(config), sched);
}

}  // namespace barrel_p2p
