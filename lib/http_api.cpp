// The HTTP admin surface: its listener and life cycle (http_api_impl.hpp
// lists the other parts).
#include "http_api_impl.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <stdexcept>

namespace barrel_p2p {

void http_api::impl::count(http::status s) {
  const auto code = static_cast<unsigned>(s);
  if (code >= 500) ++counts.responses_5xx;
  else if (code >= 400) ++counts.responses_4xx;
  else ++counts.responses_2xx;
}

task<> http_api::impl::accept_loop(std::shared_ptr<impl> self) {
  while (self->running) {
    auto [ec, socket] = co_await self->acceptor->async_accept(tuple_awaitable);
    if (!self->running) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      // Out of descriptors and the like: pause instead of spinning.
      self->log("accept failed: " + ec.message());
      if (!co_await self->n.sched().sleep(duration{100})) co_return;
      continue;
    }
    if (self->open_sessions.size() >= self->config.max_connections) {
      ++self->counts.connections_rejected;
      beast::error_code ignored;
      socket.close(ignored);
      continue;
    }
    ++self->counts.connections_accepted;
    self->loops.spawn("http session", session(self, std::move(socket)));
  }
}

task<> http_api::impl::do_start(std::shared_ptr<impl> self) {
  if (self->running || self->stopped) co_return;
  boost::system::error_code bad_host;
  const auto address = asio::ip::make_address(self->config.listen_host, bad_host);
  if (bad_host)
    throw std::invalid_argument("http_api: listen_host must be an IP address, not '" +
                                self->config.listen_host + "'");
  tcp::endpoint ep(address, self->config.listen_port);
  tcp::acceptor a(self->strand);
  a.open(ep.protocol());
  a.set_option(asio::socket_base::reuse_address(true));
  a.bind(ep);
  a.listen();
  self->bound_port = a.local_endpoint().port();
  self->acceptor.emplace(std::move(a));
  self->running = true;
  self->started = std::chrono::steady_clock::now();
  self->loops.spawn("http accept", accept_loop(self));
  self->log("listening on " + self->config.listen_host + ":" + std::to_string(self->bound_port.load()));
}

task<> http_api::impl::do_expose(std::shared_ptr<impl> self, std::shared_ptr<map> m) {
  self->maps[m->name()] = std::move(m);
  co_return;
}

task<> http_api::impl::do_expose_queries(std::shared_ptr<impl> self, std::shared_ptr<barrel_p2p::queries> q) {
  std::weak_ptr<impl> weak = self;
  q->handle("barrel_p2p.status", [weak](query_request) { return status_answer(weak); });
  self->queries.expose(std::move(q));
  co_return;
}

task<std::optional<json>> http_api::impl::status_answer(std::weak_ptr<impl> weak) {
  auto self = weak.lock();
  if (!self || self->stopped) co_return std::nullopt;
  co_return self->status_body();
}

void http_api::impl::close_all() {
  stopped = true;
  running = false;
  beast::error_code ec;
  if (acceptor) acceptor->close(ec);
  // Closing the sockets ends reads that cancellation alone may not reach.
  auto closers = open_sessions;
  for (auto& [id, close] : closers) close();
}

task<> http_api::impl::do_stop(std::shared_ptr<impl> self) {
  if (self->stopped) co_return;
  self->close_all();
  co_await self->loops.stop();
}

http_api::http_api(node& n, http_api_config config) {
  if (config.max_body_bytes == 0 || config.max_header_bytes == 0 || config.max_connections == 0 ||
      config.websocket_queue == 0 || config.max_list_limit == 0 || config.idle_timeout <= std::chrono::milliseconds{0})
    throw std::invalid_argument("http_api: limits and idle_timeout must be positive");
  impl_ = std::make_shared<impl>(n, std::move(config));
}

http_api::~http_api() {
  // Without stop(): close what is open; the sessions end on the strand.
  auto i = impl_;
  asio::post(i->strand, [i] {
    if (i->stopped) return;
    i->close_all();
    i->loops.cancel();
  });
}

task<> http_api::expose(std::shared_ptr<map> m) {
  co_await asio::co_spawn(impl_->strand, impl::do_expose(impl_, std::move(m)), asio::use_awaitable);
}

task<> http_api::expose(std::shared_ptr<registry> r) {
  co_await asio::co_spawn(impl_->strand, impl::do_expose_service(impl_, std::move(r)), asio::use_awaitable);
}
task<> http_api::expose(std::shared_ptr<placement> p) {
  co_await asio::co_spawn(impl_->strand, impl::do_expose_service(impl_, std::move(p)), asio::use_awaitable);
}
task<> http_api::expose(std::shared_ptr<reminders> r) {
  co_await asio::co_spawn(impl_->strand, impl::do_expose_service(impl_, std::move(r)), asio::use_awaitable);
}
task<> http_api::expose(std::shared_ptr<queries> q) {
  co_await asio::co_spawn(impl_->strand, impl::do_expose_queries(impl_, std::move(q)), asio::use_awaitable);
}

task<> http_api::expose(std::shared_ptr<members> m) {
  co_await asio::co_spawn(impl_->strand, impl::do_expose_service(impl_, std::move(m)), asio::use_awaitable);
}

task<> http_api::start() { co_await asio::co_spawn(impl_->strand, impl::do_start(impl_), asio::use_awaitable); }

task<> http_api::stop() { co_await asio::co_spawn(impl_->strand, impl::do_stop(impl_), asio::use_awaitable); }

std::uint16_t http_api::port() const { return impl_->bound_port; }

http_api_counters http_api::counters() const { return impl_->counts; }

}  // namespace barrel_p2p

