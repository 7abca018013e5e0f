// The TCP transport. One coroutine per connection runs the handshake, then
// three loops raced with `||` so that the first to end ends the others:
//
//   read_loop   frames in -> decode (bounded) -> the channel's handler
//   write_loop  the send queue out; a heartbeat when idle; the half-close
//   watch_loop  heartbeat timeout, a peer that stopped reading, drain deadline
//
// A node id maps to at most one connection that carries traffic
// (peer_entry::active). Everything runs on the scheduler's executor, so the
// state below needs no locks.
#include "barrel_p2p/tcp_transport.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/frame.hpp"
#include "barrel_p2p/task_group.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <iostream>
#include <map>
#include <stdexcept>
#include <system_error>
#include <variant>

namespace barrel_p2p {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;
using error_code = boost::system::error_code;

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// Handshake messages are a few hundred bytes of flat maps.
constexpr cbor_limits handshake_cbor_limits{4, 64};
// Body reads go through read_some in pieces this large at most, so a frame
// that trickles in still counts as "heard from the peer".
constexpr std::size_t read_chunk = 64 * 1024;
// Frames up to this size are decoded straight from the connection's read
// buffer; larger ones get their own allocation once their length is checked.
constexpr std::size_t read_buffer_size = 64 * 1024;
// The writer hands the socket up to this many queued frames (or bytes) in
// one gathered write: under load, one syscall carries many small messages.
constexpr std::size_t write_batch_frames = 256;
constexpr std::size_t write_batch_bytes = 1024 * 1024;

struct queued_frame {
  frame_header_bytes header;
  message_body body;
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
  asio::steady_timer wake;
};

enum class conn_state {
  handshaking,     // peer unknown yet
  hello_received,  // peer id known, proof pending
  established,
  closed,
};

struct connection {
  connection(tcp::socket s, bool is_outbound)
      : socket(std::move(s)),
        wake(socket.get_executor(), asio::steady_timer::time_point::max()),
        outbound(is_outbound) {}

  tcp::socket socket;
  asio::steady_timer wake;  // the writer idles on it; send() and closes cancel it
  const bool outbound;
  std::string remote;  // for log lines
  conn_state state = conn_state::handshaking;
  peer_descriptor peer;  // from the peer's hello
  handshake_nonce own_nonce{};
  handshake_nonce peer_nonce{};
  std::shared_ptr<dial_outcome> outcome;  // outbound: the connect() waiting
  std::optional<peer_address> dialed;     // outbound: the address dialled
  std::deque<queued_frame> queue;         // not yet handed to the socket
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
  }
  void close_socket() {
    error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
    wake.cancel();
  }
};

// Simultaneous dials give two connections between the same pair; both ends
// keep the same one: the one dialled by the smaller id (then, for two dials
// from the same node, the smaller dialler nonce). Both ends know both.
bool dialled_before(const connection& a, const connection& b, const std::string& self_id) {
  const auto key = [&](const connection& c) {
    return std::pair<const std::string&, const handshake_nonce&>(
        c.outbound ? self_id : c.peer.id, c.outbound ? c.own_nonce : c.peer_nonce);
  };
  return key(a) < key(b);
}

struct peer_entry {
  peer_descriptor descriptor;
  std::shared_ptr<connection> active;  // null while a replacement handshake finishes
  std::deque<queued_frame> held;       // sends made while active is null
  disconnect_reason deferred = disconnect_reason::closed_by_peer;
};

const message_body& heartbeat_body() {
  static const message_body body = encode_body(make_heartbeat());
  return body;
}

struct frame_in {
  enum class status { ok, closed, failed, bad_frame } st = status::ok;
  channel ch = channel::control;
  json body;
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
    if (config_.cluster_secret.empty())
      throw std::invalid_argument("tcp_transport: empty cluster_secret");
    if (config_.max_frame_bytes < handshake_max_frame_bytes)
      throw std::invalid_argument("tcp_transport: max_frame_bytes below the handshake size");
    if (config_.send_queue_limit == 0)
      throw std::invalid_argument("tcp_transport: send_queue_limit must be positive");
    if (config_.connect_timeout <= duration{0} || config_.handshake_timeout <= duration{0} ||
        config_.heartbeat_interval <= duration{0} || config_.heartbeat_timeout <= duration{0})
      throw std::invalid_argument("tcp_transport: timeouts and intervals must be positive");
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
    co_return outcome->result;
  }

  bool send(const std::string& peer_id, channel ch, const message_body& body) {
    if (!body || ch == channel::control || static_cast<std::size_t>(ch) >= channel_count)
      return false;
    auto it = peers_.find(peer_id);
    if (it == peers_.end()) return false;
    if (frame_header_size + body->size() > config_.max_frame_bytes) {
      log("not sending " + std::to_string(body->size()) + " bytes to " + peer_id +
          ": over max_frame_bytes");
      return false;
    }
    auto& entry = it->second;
    auto& queue = entry.active ? entry.active->queue : entry.held;
    if (queue.size() >= config_.send_queue_limit) {
      ++counters_.send_queue_drops;
      return false;
    }
    queue.push_back({encode_frame_header(ch, body->size()), body});
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

  std::size_t fullest_send_queue() const {
    std::size_t most = 0;
    for (const auto& [id, entry] : peers_)
      most = std::max(most, entry.active ? entry.active->queue.size() : entry.held.size());
    return most;
  }

  std::size_t send_queue_limit() const { return config_.send_queue_limit; }

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
    const auto text = "barrel_p2p tcp " + self_.id + ": " + line;
    if (config_.log) {
      try {
        config_.log(text);
      } catch (...) {
      }
    } else {
      std::cerr << text << '\n';
    }
  }

  static std::string describe(const connection& c) {
    return c.peer.id.empty() ? c.remote : c.peer.id + " (" + c.remote + ")";
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
      auto conn = std::make_shared<connection>(std::move(socket), false);
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
    auto conn = std::make_shared<connection>(std::move(socket), true);
    conn->outcome = std::move(outcome);
    conn->dialed = addr;
    co_await run_connection(conn);
  }

  task<bool> dial_socket(tcp::socket& socket, const peer_address& addr) {
    error_code ec;
    std::vector<tcp::endpoint> endpoints;
    auto address = asio::ip::make_address(addr.host, ec);
    if (!ec) {
      endpoints.emplace_back(address, addr.port);
    } else {
      tcp::resolver resolver(ex_);
      const auto service = std::to_string(addr.port);
      auto [rec, results] = co_await resolver.async_resolve(addr.host, service, use_tuple);
      if (rec) {
        log("cannot resolve " + addr.host + ": " + rec.message());
        co_return false;
      }
      for (const auto& r : results) endpoints.push_back(r.endpoint());
    }
    const auto deadline = clock_now() + config_.connect_timeout;
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
    conn->socket.set_option(tcp::no_delay(true), ec);
    const auto endpoint = conn->socket.remote_endpoint(ec);
    conn->remote = ec ? std::string("?") : endpoint.address().to_string() + ":" +
                                                std::to_string(endpoint.port());
    conn->last_received = conn->last_sent = clock_now();
    auto reason = disconnect_reason::closed_locally;
    try {
      if (co_await handshake_within_timeout(conn) && !stopping_) {
        establish(conn);
        auto r = co_await (read_loop(conn) || write_loop(conn) || watch_loop(conn));
        reason = std::visit([](disconnect_reason why) { return why; }, r);
      }
    } catch (const std::exception& e) {
      // Cancellation by stop(); anything else is a bug worth a line.
      if (!stopping_) log("connection to " + describe(*conn) + " failed: " + e.what());
      reason = disconnect_reason::io_error;
    }
    finish(conn, reason);
  }

  task<bool> handshake_within_timeout(std::shared_ptr<connection> conn) {
    auto r = co_await (handshake(conn) || sleep_for(config_.handshake_timeout));
    std::optional<std::string> failure;
    if (r.index() == 0) failure = std::move(std::get<0>(r));
    else failure = std::get<1>(r) ? "timed out" : "cancelled";
    if (!failure) co_return true;
    if (!stopping_) {
      ++counters_.handshake_failures;
      log("handshake with " + describe(*conn) + " failed: " + *failure);
    }
    co_return false;
  }

  // Both sides run this at once: hello out, hello in, auth out (the answer
  // to the peer's challenge), auth in. Returns why it failed, or nullopt.
  task<std::optional<std::string>> handshake(std::shared_ptr<connection> conn) {
    try {
      conn->own_nonce = random_nonce();
      const hello_message hello{protocol_version, self_, conn->own_nonce};
      auto hello_body = encode_body(make_hello(hello));
      if (!co_await write_direct(conn, std::move(hello_body))) co_return "cannot send hello";

      auto in = co_await read_frame(conn, handshake_max_frame_bytes, handshake_cbor_limits);
      if (in.st != frame_in::status::ok) co_return "reading hello: " + in.detail;
      auto peer_hello = in.ch == channel::control ? parse_hello(in.body) : std::nullopt;
      if (!peer_hello) co_return "malformed hello";
      if (peer_hello->version != protocol_version)
        co_return "protocol version " + std::to_string(peer_hello->version) + ", expected " +
            std::to_string(protocol_version);
      if (peer_hello->self.id == self_.id) co_return "connection to self refused";
      conn->peer = peer_hello->self;
      conn->peer_nonce = peer_hello->nonce;
      conn->state = conn_state::hello_received;

      const auto mac = compute_mac(config_.cluster_secret, conn->peer_nonce, self_.id, conn->peer.id);
      auto auth_body = encode_body(make_auth(mac));
      if (!co_await write_direct(conn, std::move(auth_body))) co_return "cannot send auth";

      in = co_await read_frame(conn, handshake_max_frame_bytes, handshake_cbor_limits);
      if (in.st != frame_in::status::ok) co_return "reading auth: " + in.detail;
      auto peer_mac = in.ch == channel::control ? parse_auth(in.body) : std::nullopt;
      if (!peer_mac) co_return "malformed auth";
      if (!verify_mac(config_.cluster_secret, conn->own_nonce, self_.id, conn->peer.id, *peer_mac))
        co_return "wrong cluster secret (mac mismatch)";
      co_return std::nullopt;
    } catch (const std::exception& e) {
      co_return std::string(e.what());
    }
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
        auto in = co_await read_frame(conn, config_.max_frame_bytes, cbor_limits{});
        switch (in.st) {
          case frame_in::status::ok: break;
          case frame_in::status::closed: co_return disconnect_reason::closed_by_peer;
          case frame_in::status::failed: co_return disconnect_reason::io_error;
          case frame_in::status::bad_frame:
            log("closing connection to " + describe(*conn) + ": " + in.detail);
            co_return disconnect_reason::protocol_error;
        }
        if (in.ch == channel::control) continue;  // heartbeat: hearing it was the point
        deliver(*conn, in.ch, std::move(in.body));
      }
    } catch (...) {
      co_return disconnect_reason::closed_locally;  // cancelled
    }
  }

  void deliver(const connection& conn, channel ch, json&& message) {
    // A connection we are closing ourselves delivers nothing more; a
    // replaced one still does (its peer is connected) while it drains.
    if (conn.closing == disconnect_reason::closed_locally) return;
    if (!peers_.contains(conn.peer.id)) return;
    // No handler: nobody listens on this channel here.
    call_handler("message", handlers_[static_cast<std::size_t>(ch)], conn.peer.id, std::move(message));
  }

  task<disconnect_reason> write_loop(std::shared_ptr<connection> conn) {
    try {
      for (;;) {
        while (!conn->queue.empty()) {
          std::vector<queued_frame> batch;
          std::size_t bytes = 0;
          while (!conn->queue.empty() && batch.size() < write_batch_frames && bytes < write_batch_bytes) {
            bytes += conn->queue.front().body->size();
            batch.push_back(std::move(conn->queue.front()));
            conn->queue.pop_front();
          }
          if (!co_await write_frames(conn, batch)) co_return disconnect_reason::io_error;
        }
        if (conn->closing) {
          if (!conn->write_shut) {
            conn->write_shut = true;
            error_code ignored;
            conn->socket.shutdown(tcp::socket::shutdown_send, ignored);
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
              encode_frame_header(channel::control, heartbeat_body()->size()), heartbeat_body()};
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
          if (now - conn->last_received >= limit) {
            ++counters_.heartbeat_timeouts;
            log("nothing heard from " + describe(*conn) + " for " +
                std::to_string(limit.count()) + " ms: closing");
            co_return disconnect_reason::heartbeat_timeout;
          }
          if (conn->write_started && now - *conn->write_started >= limit) {
            ++counters_.heartbeat_timeouts;
            log(describe(*conn) + " has not read for " + std::to_string(limit.count()) +
                " ms: closing");
            co_return disconnect_reason::heartbeat_timeout;
          }
          next = conn->last_received + limit;
          if (conn->write_started) next = std::min(next, *conn->write_started + limit);
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
      auto [ec, n] = co_await conn->socket.async_read_some(
          asio::buffer(b.data() + conn->read_end, b.size() - conn->read_end), use_tuple);
      if (ec) co_return ec;
      conn->read_end += n;
      conn->last_received = clock_now();
    }
    co_return error_code{};
  }

  task<frame_in> read_frame(std::shared_ptr<connection> conn, std::size_t max_frame_bytes,
                            cbor_limits limits) {
    frame_in in;
    const auto failed = [&](const error_code& ec) {
      in.st = ec == asio::error::eof ? frame_in::status::closed : frame_in::status::failed;
      in.detail = ec == asio::error::eof ? "closed by peer" : ec.message();
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
    std::span<const std::uint8_t> body;
    if (size <= conn->read_buffer.size()) {
      if (auto ec = co_await fill(conn, size)) co_return failed(ec);
      body = {conn->read_buffer.data() + conn->read_begin, size};
      conn->read_begin += size;
    } else {
      large.resize(size);
      std::size_t got = conn->read_end - conn->read_begin;
      std::memcpy(large.data(), conn->read_buffer.data() + conn->read_begin, got);
      conn->read_begin = conn->read_end = 0;
      while (got < size) {
        const auto want = std::min(size - got, read_chunk);
        auto [rec, m] = co_await conn->socket.async_read_some(asio::buffer(large.data() + got, want), use_tuple);
        if (rec) co_return failed(rec);
        got += m;
        conn->last_received = clock_now();
      }
      body = large;
    }
    ++counters_.frames_received;
    counters_.bytes_received += frame_header_size + size;
    cbor_error error;
    auto decoded = decode_cbor(body, limits, &error);
    if (!decoded)
      co_return bad("bad frame: undecodable body on channel " +
                    std::to_string(static_cast<int>(parsed.header.ch)) + ": " + error.reason);
    in.ch = parsed.header.ch;
    in.body = std::move(*decoded);
    co_return in;
  }

  task<bool> write_frames(std::shared_ptr<connection> conn, const std::vector<queued_frame>& frames) {
    std::vector<asio::const_buffer> buffers;
    buffers.reserve(2 * frames.size());
    for (const auto& f : frames) {
      buffers.push_back(asio::buffer(f.header));
      buffers.push_back(asio::buffer(*f.body));
    }
    conn->write_started = clock_now();
    auto [ec, n] = co_await asio::async_write(conn->socket, buffers, use_tuple);
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
    const queued_frame frame{encode_frame_header(channel::control, body->size()), std::move(body)};
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

  std::map<std::string, peer_entry> peers_;                      // connected, by id
  std::vector<std::shared_ptr<connection>> connections_;         // every live socket
  std::map<std::string, std::shared_ptr<dial_outcome>> dials_;  // in flight, by address
};

class tcp_transport final : public transport {
 public:
  tcp_transport(tcp_transport_config config, scheduler& sched)
      : impl_(std::make_shared<tcp_transport_impl>(std::move(config), sched.get_executor())) {}
  ~tcp_transport() override { impl_->abandon(); }
  tcp_transport(const tcp_transport&) = delete;
  tcp_transport& operator=(const tcp_transport&) = delete;

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
  std::size_t send_queue_limit() const override { return impl_->send_queue_limit(); }
  const transport_counters& counters() const override { return impl_->counters(); }

 private:
  std::shared_ptr<tcp_transport_impl> impl_;
};

}  // namespace

std::unique_ptr<transport> make_tcp_transport(tcp_transport_config config, scheduler& sched) {
  return std::make_unique<tcp_transport>(std::move(config), sched);
}

}  // namespace barrel_p2p
