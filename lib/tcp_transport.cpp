// The TCP transport: its public surface and its peer table (one connection
// per node id, the simultaneous-dial tie-break). The other parts of the
// implementation, and the state they share, are listed in
// tcp_transport_impl.hpp.
#include "barrel_p2p/tcp_transport.hpp"

#include "printable.hpp"
#include "tcp_transport_impl.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <system_error>

namespace barrel_p2p::detail::tcp_impl {

tcp_transport_impl::tcp_transport_impl(tcp_transport_config config, const executor& ex)
    : config_(std::move(config)),
      // Without a sink of its own, standard error: a transport's refusals
      // are what an operator most needs to see.
      log(config_.log ? config_.log : stderr_log_sink(), config_.node_id, "tcp"),
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

task<> tcp_transport_impl::start() {
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

task<> tcp_transport_impl::stop() {
  if (!stopping_) {
    close_everything();
    auto up = std::exchange(peers_, {});
    for (auto& [id, entry] : up) report_disconnected(id, disconnect_reason::closed_locally);
  }
  co_await group_.stop();
  for (auto& [key, outcome] : std::exchange(dials_, {})) outcome->complete(std::nullopt);
  stopped_ = true;
}

void tcp_transport_impl::close_everything() {
  stopping_ = true;
  error_code ignored;
  acceptor_.close(ignored);
  for (auto& c : connections_) {
    c->begin_close(disconnect_reason::closed_locally, clock_now());
    c->close_socket();
  }
}

void tcp_transport_impl::abandon() {
  on_connected_ = nullptr;
  on_disconnected_ = nullptr;
  on_send_progress_ = nullptr;
  for (auto& h : handlers_) h = nullptr;
  log = logger();
  if (stopped_) return;
  close_everything();
  peers_.clear();
  asio::co_spawn(ex_, keep(group_.stop()), asio::detached);
}

task<std::optional<peer_descriptor>> tcp_transport_impl::connect(peer_address addr) {
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

std::optional<handshake_failure> tcp_transport_impl::last_dial_failure(const peer_address& addr) const {
  const auto it = dial_failures_.find(addr.to_string());
  return it == dial_failures_.end() ? std::nullopt : std::optional<handshake_failure>(it->second);
}

bool tcp_transport_impl::send(const std::string& peer_id, channel ch, const message_body& body) {
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

void tcp_transport_impl::disconnect(const std::string& peer_id) {
  auto it = peers_.find(peer_id);
  if (it == peers_.end()) return;
  auto conn = std::move(it->second.active);
  peers_.erase(it);
  if (conn) conn->begin_close(disconnect_reason::closed_locally, clock_now());
  report_disconnected(peer_id, disconnect_reason::closed_locally);
}

read_hold tcp_transport_impl::hold_reading(const std::string& peer_id) {
  bool first = false;
  auto hold = read_holds_.take(peer_id, &first);
  if (first) {
    ++counters_.read_holds;
    for (const auto& c : connections_)
      if (c->state == conn_state::established && c->peer.id == peer_id) start_hold(*c);
  }
  return hold;
}

void tcp_transport_impl::start_hold(connection& c) {
  if (c.read_held) return;
  c.read_held = true;
  send_hold_notice(c, true);
}

void tcp_transport_impl::resume_reading(const std::string& peer_id) {
  for (const auto& c : connections_) {
    if (c->peer.id != peer_id || !c->read_held) continue;
    c->read_held = false;
    c->last_received = clock_now();  // its silence was ours
    send_hold_notice(*c, false);
    c->read_wake.cancel();
  }
}

std::size_t tcp_transport_impl::fullest_send_queue() const {
  std::size_t most = 0;
  for (const auto& [id, entry] : peers_)
    most = std::max(most, entry.active ? entry.active->queue.size() : entry.held.size());
  return most;
}

std::optional<send_queue_state> tcp_transport_impl::send_queue(const std::string& peer_id) const {
  const auto it = peers_.find(peer_id);
  if (it == peers_.end()) return std::nullopt;
  const auto& entry = it->second;
  const auto& queue = entry.active ? entry.active->queue : entry.held;
  send_queue_state state;
  state.frames = queue.size();
  state.bytes = queue.bytes;
  state.frame_limit = config_.send_queue_limit;
  state.byte_limit = config_.send_queue_bytes_limit;
  if (entry.active && entry.active->write_started)
    state.blocked_for = clock_now() - *entry.active->write_started;
  return state;
}

void tcp_transport_impl::set_cluster_secrets(std::string primary, std::vector<std::string> accepted) {
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

void tcp_transport_impl::reload_certificates() {
  if (config_.security != transport_security::certificates)
    throw std::logic_error("tcp_transport: certificates are for certificates mode");
  tls_context_ = detail::make_certificate_context(config_.certificates, config_.node_id);
  log("certificates reloaded from " + config_.certificates.certificate.string());
}

std::vector<std::string> tcp_transport_impl::connected_peers() const {
  std::vector<std::string> out;
  out.reserve(peers_.size());
  for (const auto& [id, entry] : peers_) out.push_back(id);
  return out;
}

task<bool> tcp_transport_impl::sleep_for(duration d) {
  asio::steady_timer timer(ex_, d);
  auto [ec] = co_await timer.async_wait(use_tuple);
  co_return !ec;
}

void tcp_transport_impl::note_handshake_failure(handshake_failure reason, const std::string& line) {
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

std::optional<peer_descriptor> tcp_transport_impl::connected_at(const peer_address& addr) const {
  for (const auto& [id, entry] : peers_) {
    if (entry.descriptor.address == addr) return entry.descriptor;
    if (entry.active && entry.active->dialed == addr) return entry.descriptor;
  }
  return std::nullopt;
}

bool tcp_transport_impl::handshake_pending(const std::string& peer_id) const {
  return std::any_of(connections_.begin(), connections_.end(), [&](const auto& c) {
    return c->state == conn_state::hello_received && c->peer.id == peer_id;
  });
}

void tcp_transport_impl::complete_dial(connection& c, std::optional<peer_descriptor> result) {
  if (!c.outcome) return;
  settle_dial(*c.dialed, c.outcome, std::move(result));
  c.outcome.reset();
}

void tcp_transport_impl::settle_dial(const peer_address& addr, const std::shared_ptr<dial_outcome>& outcome,
                 std::optional<peer_descriptor> result) {
  auto it = dials_.find(addr.to_string());
  if (it != dials_.end() && it->second == outcome) dials_.erase(it);
  outcome->complete(std::move(result));
}

void tcp_transport_impl::establish(const std::shared_ptr<connection>& conn) {
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

void tcp_transport_impl::finish(const std::shared_ptr<connection>& conn, disconnect_reason loop_reason) {
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

}  // namespace barrel_p2p::detail::tcp_impl

namespace barrel_p2p {
namespace {

class tcp_transport_handle final : public tcp_transport {
 public:
  tcp_transport_handle(tcp_transport_config config, scheduler& sched)
      : impl_(std::make_shared<detail::tcp_impl::tcp_transport_impl>(std::move(config), sched.get_executor())) {}
  ~tcp_transport_handle() override { impl_->abandon(); }
  tcp_transport_handle(const tcp_transport_handle&) = delete;
  tcp_transport_handle& operator=(const tcp_transport_handle&) = delete;

  const peer_descriptor& self() const override { return impl_->self(); }
  void on_connected(connected_handler h) override { impl_->on_connected(std::move(h)); }
  void on_disconnected(disconnected_handler h) override { impl_->on_disconnected(std::move(h)); }
  void on_send_progress(send_progress_handler h) override { impl_->on_send_progress(std::move(h)); }
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
  std::optional<send_queue_state> send_queue(const std::string& peer_id) const override {
    return impl_->send_queue(peer_id);
  }
  read_hold hold_reading(const std::string& peer_id) override { return impl_->hold_reading(peer_id); }
  const transport_counters& counters() const override { return impl_->counters(); }
  void set_cluster_secrets(std::string primary, std::vector<std::string> accepted) override {
    impl_->set_cluster_secrets(std::move(primary), std::move(accepted));
  }
  void reload_certificates() override { impl_->reload_certificates(); }

 private:
  std::shared_ptr<detail::tcp_impl::tcp_transport_impl> impl_;
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
