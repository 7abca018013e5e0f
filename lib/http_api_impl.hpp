// Internal to the HTTP surface: the state of an http_api and the member
// functions of its implementation, in three files, one concern each:
//
//   http_api.cpp      the listener and the life cycle: start, expose, stop
//   http_routes.cpp   who may ask (token, Host and Origin checks) and what a
//                     request gets: routing and the handlers of /status,
//                     /metrics, /ui and /maps (the registry, placement,
//                     reminders, members and queries routes are in
//                     http_services.cpp and http_queries.cpp)
//   http_session.cpp  one connection: HTTP/1.1 requests in turn, or the
//                     WebSocket stream of a map's events
//
// Everything runs on the node's strand.
#pragma once

#include "barrel_p2p/http_api.hpp"
#include "barrel_p2p/log.hpp"
#include "barrel_p2p/map.hpp"
#include "barrel_p2p/node.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "barrel_p2p/queries.hpp"
#include "http_common.hpp"
#include "http_queries.hpp"
#include "http_services.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace barrel_p2p::detail::http_surface {

// What a request asks for, once the target is decoded.
struct route {
  enum class kind { status, metrics, maps, map_list, map_key, map_events, unknown } what = kind::unknown;
  std::string map;
  std::string key;
  std::string_view query;
  std::string error;  // a malformed target
};

// Decodes a request target (http_routes.cpp). `upgrade`: the request asks
// for a WebSocket.
route parse_target(std::string_view target, bool upgrade);

namespace websocket = boost::beast::websocket;
using tcp = asio::ip::tcp;
using ws_stream = websocket::stream<beast::tcp_stream>;

}  // namespace barrel_p2p::detail::http_surface

namespace barrel_p2p {

// This header is included only by the HTTP surface's own files
// (http_api.cpp, http_routes.cpp, http_session.cpp), which all speak in the
// surface's names.
using namespace detail::http_surface;

struct http_api::impl : std::enable_shared_from_this<impl> {
  node& n;
  http_api_config config;
  executor strand;
  std::map<std::string, std::shared_ptr<map>> maps;  // strand only
  service_routes services;                           // strand only
  query_routes queries;                              // strand only
  std::optional<tcp::acceptor> acceptor;
  task_group loops;
  // One closer per live connection, so stop() can end sessions blocked in a read.
  std::map<std::uint64_t, std::function<void()>> open_sessions;
  std::uint64_t next_session = 0;
  http_api_counters counts;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<std::uint16_t> bound_port{0};
  bool running = false;
  bool stopped = false;
  logger log{n.config().log, n.id(), "http"};

  impl(node& nd, http_api_config c) : n(nd), config(std::move(c)), strand(nd.get_executor()), loops(nd.get_executor()) {}

  std::shared_ptr<map> find_map(const std::string& name) const {
    auto it = maps.find(name);
    return it == maps.end() ? nullptr : it->second;
  }

  response status(unsigned version) const { return json_response(http::status::ok, status_body(), version); }

  static json key_value(const std::string& key, const json& value) { return json{{"key", key}, {"value", value}}; }

  static json key_ok(const std::string& key) { return json{{"key", key}, {"ok", true}}; }

  template <class T>
  static task<> do_expose_service(std::shared_ptr<impl> self, std::shared_ptr<T> s) {
    self->services.expose(std::move(s));
    co_return;
  }

  // -------- The listener and the life cycle (http_api.cpp)

  void count(http::status s);

  static task<> accept_loop(std::shared_ptr<impl> self);

  static task<> do_start(std::shared_ptr<impl> self);

  // A static coroutine, not a capturing lambda: GCC 12 released the captured
  // shared_ptr once too often (docs/how-to/contributing.md).
  static task<> do_expose(std::shared_ptr<impl> self, std::shared_ptr<map> m);

  static task<> do_expose_queries(std::shared_ptr<impl> self, std::shared_ptr<barrel_p2p::queries> q);

  static task<std::optional<json>> status_answer(std::weak_ptr<impl> weak);

  static task<> do_stop(std::shared_ptr<impl> self);

  // The start of stop() and of ~http_api: no more connections, every open
  // one closed.
  void close_all();

  // -------- Who may ask, routing and handlers (http_routes.cpp)

  bool authorized(const request& req) const;

  // A browser cannot set headers on a WebSocket, only subprotocols: it may
  // offer the token as "barrel_p2p.bearer.<token as hex>". The protocol
  // offered with the right token, to echo in the answer; nullopt if none.
  std::optional<std::string> token_protocol(const request& req) const;

  static std::optional<std::string> from_hex(std::string_view hex);

  // "[::1]:8946" -> "::1", "Node-1:80" -> "node-1", "::1" -> "::1".
  static std::string host_of(std::string_view authority);

  bool known_host(std::string_view authority) const;

  // Nullopt when the request may go on; else the refusal. Only without a
  // token (see the config).
  std::optional<response> foreign(const request& req, bool check_origin);

  response unauthorized(unsigned version);

  // GET /status, and this node's answer to the query barrel_p2p.status.
  json status_body() const;

  // The /ui page: static, so served without the bearer token (it asks for
  // one when the API answers 401). Without a token the Host check applies,
  // as to every request.
  response ui(const request& req) const;

  // This node's standing against its peers' clocks (docs/concepts/clocks.md).
  json clock_json() const;

  response metrics(unsigned version) const;

  void write_http_metrics(prometheus_writer& w) const;

  response list_maps(unsigned version) const;

  response list_map(const map& m, std::string_view query, unsigned version) const;

  static task<response> handle(std::shared_ptr<impl> self, const request& req);

  // A put (with a value) or a remove, and what its failure means to the
  // client: a closed map (the node is stopping) is unavailable, anything
  // else the map refuses is the validator's verdict, and any other error
  // (the disk, most likely) means the write did not happen.
  static task<response> write(std::shared_ptr<impl> self, std::shared_ptr<map> m, std::string key,
                              std::optional<json> value, unsigned version);

  // -------- One connection: HTTP requests or a WebSocket (http_session.cpp)

  // Takes a session off the list stop() closes, however it ends.
  struct session_guard {
    impl& self;
    std::uint64_t id;
    ~session_guard() { self.open_sessions.erase(id); }
  };

  static task<> write_response(beast::tcp_stream& stream, response& res, std::chrono::milliseconds timeout,
                               bool& ok);

  static task<> session(std::shared_ptr<impl> self, tcp::socket socket);

  // After answering a request we did not read to its end: closing with
  // unread bytes would reset the connection and could destroy the answer
  // before the client reads it. Half-close, then drain briefly.
  static task<> lingering_close(beast::tcp_stream& stream);

  static task<> events_session(std::shared_ptr<impl> self, beast::tcp_stream& stream, request& req,
                               std::uint64_t id);

  // Client messages are ignored, but a read must be pending for Beast to
  // answer pings and the closing handshake.
  static task<> discard_reads(ws_stream& ws);

  // A map's change events, or the refusal.
  std::optional<text_events> map_events(beast::string_view target, unsigned version, std::optional<response>& refusal);

  static task<std::optional<std::string>> next_map_text(std::shared_ptr<event_stream<map_event>> events);

  static task<> send_events(std::shared_ptr<impl> self, ws_stream& ws, text_events& events);
};

}  // namespace barrel_p2p
