// The TCP transport's way in and out: accepting connections under the
// handshake caps (silent sockets evicted first), dialling, and bounded name
// lookups (tcp_transport_impl.hpp).
#include "printable.hpp"
#include "tcp_transport_impl.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

#include <algorithm>

namespace barrel_p2p::detail::tcp_impl {

using namespace asio::experimental::awaitable_operators;

task<> tcp_transport_impl::accept_loop() {
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

task<> tcp_transport_impl::dial(peer_address addr, std::shared_ptr<dial_outcome> outcome) {
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

task<std::optional<std::vector<tcp::endpoint>>> tcp_transport_impl::resolve(const peer_address& addr, duration limit) {
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

task<bool> tcp_transport_impl::dial_socket(tcp::socket& socket, const peer_address& addr) {
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

std::string tcp_transport_impl::source_of(const asio::ip::address& a) {
  if (a.is_v6() && !a.to_v6().is_v4_mapped()) {
    auto bytes = a.to_v6().to_bytes();
    std::fill(bytes.begin() + 8, bytes.end(), 0);
    return asio::ip::address_v6(bytes).to_string() + "/64";
  }
  return a.is_v6() ? asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).to_string() : a.to_string();
}

bool tcp_transport_impl::admit(const std::string& source) {
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

void tcp_transport_impl::release_pending(connection& conn) {
  if (!conn.counted_pending) return;
  conn.counted_pending = false;
  --pending_inbound_;
  auto it = pending_by_source_.find(conn.source_address);
  if (it != pending_by_source_.end() && --it->second == 0) pending_by_source_.erase(it);
}

}  // namespace barrel_p2p::detail::tcp_impl
