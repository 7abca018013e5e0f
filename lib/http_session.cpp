// The HTTP admin surface: one connection, HTTP/1.1 requests in turn (with
// limits and an idle timeout), or the WebSocket stream of a map's events
// (http_api_impl.hpp).
#include "http_api_impl.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

namespace barrel_p2p {
namespace {

std::string event_text(const map_event& ev) {
  json j{{"event", ev.what == map_event::kind::put ? "put" : "remove"}, {"key", ev.key}};
  if (ev.what == map_event::kind::put) j["value"] = ev.value;
  return dump(j);
}

std::string dropped_text(std::uint64_t count) { return dump(json{{"event", "dropped"}, {"count", count}}); }

}  // namespace

task<> http_api::impl::write_response(beast::tcp_stream& stream, response& res, std::chrono::milliseconds timeout,
                             bool& ok) {
  res.prepare_payload();
  stream.expires_after(timeout);
  auto [ec, n] = co_await http::async_write(stream, res, tuple_awaitable);
  ok = !ec;
}

task<> http_api::impl::session(std::shared_ptr<impl> self, tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  const auto id = self->next_session++;
  self->open_sessions[id] = [&stream] {
    beast::error_code ec;
    stream.socket().close(ec);
  };
  session_guard guard{*self, id};
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(self->config.max_header_bytes));
    parser.body_limit(self->config.max_body_bytes);
    stream.expires_after(self->config.idle_timeout);
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, tuple_awaitable);
    if (ec) {
      // A malformed request gets one answer and the connection closes;
      // a closed, reset or idle connection just ends.
      std::optional<response> res;
      if (ec == http::error::body_limit)
        res = error_response(http::status::payload_too_large, "body_too_large",
                             "bodies are at most " + std::to_string(self->config.max_body_bytes) + " bytes", 11);
      else if (ec == http::error::header_limit)
        res = error_response(http::status::request_header_fields_too_large, "header_too_large",
                             "headers are at most " + std::to_string(self->config.max_header_bytes) + " bytes", 11);
      else if (ec.category() == http::make_error_code(http::error::bad_target).category() && ec != http::error::end_of_stream &&
               ec != http::error::partial_message)
        res = error_response(http::status::bad_request, "malformed_request", ec.message(), 11);
      if (res) {
        ++self->counts.malformed_requests;
        self->count(res->result());
        res->keep_alive(false);
        bool ok = false;
        co_await write_response(stream, *res, self->config.idle_timeout, ok);
        if (ok) co_await lingering_close(stream);
      }
      break;
    }
    ++self->counts.requests;
    auto req = parser.release();
    if (websocket::is_upgrade(req)) {
      co_await events_session(self, stream, req, id);
      co_return;
    }
    auto res = co_await handle(self, req);
    self->count(res.result());
    res.keep_alive(req.keep_alive());
    bool ok = false;
    co_await write_response(stream, res, self->config.idle_timeout, ok);
    if (!ok || !res.keep_alive()) break;
  }
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
}

task<> http_api::impl::lingering_close(beast::tcp_stream& stream) {
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  stream.expires_after(std::chrono::seconds(1));
  std::size_t drained = 0;
  char sink[4096];
  while (drained < 1024 * 1024) {
    auto [rec, n] = co_await stream.async_read_some(asio::buffer(sink), tuple_awaitable);
    if (rec) break;
    drained += n;
  }
}

task<> http_api::impl::events_session(std::shared_ptr<impl> self, beast::tcp_stream& stream, request& req,
                             std::uint64_t id) {
  const auto version = req.version();
  std::optional<response> refusal;
  const std::string_view target(req.target().data(), req.target().size());
  const auto path = target.substr(0, target.find('?'));
  std::optional<text_events> source;
  const auto protocol = self->token_protocol(req);
  if (!protocol && !self->authorized(req)) refusal = self->unauthorized(version);
  else if (auto bad = self->foreign(req, true)) refusal = std::move(bad);
  else if (service_routes::owns(path)) source = self->services.events(path, self->config.websocket_queue, version, refusal);
  else source = self->map_events(req.target(), version, refusal);
  if (refusal) {
    self->count(refusal->result());
    refusal->keep_alive(false);
    bool ok = false;
    co_await write_response(stream, *refusal, self->config.idle_timeout, ok);
    co_return;
  }

  ws_stream ws(std::move(stream));
  self->open_sessions[id] = [&ws] {
    beast::error_code ec;
    beast::get_lowest_layer(ws).socket().close(ec);
  };
  beast::get_lowest_layer(ws).expires_never();
  // Pings keep a silent but healthy client; a dead one is dropped.
  websocket::stream_base::timeout t{std::chrono::seconds(10), self->config.idle_timeout, true};
  ws.set_option(t);
  ws.read_message_max(64 * 1024);
  ws.set_option(websocket::stream_base::decorator([protocol](websocket::response_type& res) {
    res.set(http::field::server, "barrel_p2p");
    if (protocol) res.set(http::field::sec_websocket_protocol, *protocol);  // a browser insists on the echo
  }));
  auto [ec] = co_await ws.async_accept(req, tuple_awaitable);
  if (ec) co_return;
  self->count(http::status::switching_protocols);
  ++self->counts.websocket_sessions;
  using namespace asio::experimental::awaitable_operators;
  co_await (discard_reads(ws) || send_events(self, ws, *source));
  auto [cec] = co_await ws.async_close(websocket::close_code::going_away, tuple_awaitable);
  (void)cec;
}

task<> http_api::impl::discard_reads(ws_stream& ws) {
  beast::flat_buffer buffer;
  for (;;) {
    auto [ec, n] = co_await ws.async_read(buffer, tuple_awaitable);
    if (ec) co_return;
    buffer.consume(buffer.size());
  }
}

std::optional<text_events> http_api::impl::map_events(beast::string_view target, unsigned version, std::optional<response>& refusal) {
  auto r = parse_target(target, true);
  std::shared_ptr<map> m;
  if (r.what != route::kind::map_events) {
    refusal = error_response(http::status::not_found, "not_found",
                             "WebSocket upgrades are served at /maps/{map}/events (and see the reference)", version);
    return std::nullopt;
  }
  if (!(m = find_map(r.map))) {
    refusal = error_response(http::status::not_found, "unknown_map",
                             "no map named '" + r.map + "' is served by this node", version);
    return std::nullopt;
  }
  auto events = std::make_shared<event_stream<map_event>>(m->subscribe(config.websocket_queue));
  return text_events{[events] { return next_map_text(events); }, [events] { return events->dropped(); }};
}

task<std::optional<std::string>> http_api::impl::next_map_text(std::shared_ptr<event_stream<map_event>> events) {
  auto ev = co_await events->next();
  if (!ev) co_return std::nullopt;
  co_return event_text(*ev);
}

task<> http_api::impl::send_events(std::shared_ptr<impl> self, ws_stream& ws, text_events& events) {
  std::uint64_t dropped_seen = 0;
  ws.text(true);
  for (;;) {
    auto text = co_await events.next();
    if (!text) co_return;  // the source closed
    if (events.dropped() != dropped_seen) {
      // Tell the client it missed events, so it can re-read the state.
      const auto lost = events.dropped() - dropped_seen;
      dropped_seen = events.dropped();
      self->counts.websocket_events_dropped += lost;
      const auto notice = dropped_text(lost);
      auto [ec, n] = co_await ws.async_write(asio::buffer(notice), tuple_awaitable);
      if (ec) co_return;
    }
    auto [ec, n] = co_await ws.async_write(asio::buffer(*text), tuple_awaitable);
    if (ec) co_return;
    ++self->counts.websocket_events_sent;
  }
}

}  // namespace barrel_p2p
