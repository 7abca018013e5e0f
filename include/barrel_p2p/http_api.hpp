// The HTTP admin surface of a node (Boost.Beast, coroutines): status,
// Prometheus metrics, the maps as REST resources, change events over a
// WebSocket. docs/reference/http-api.md lists every route and error.
//
//   GET    /status                  node id, views, maps with sizes, uptime
//   GET    /metrics                 Prometheus text exposition
//   GET    /maps                    the exposed maps and their sizes
//   GET    /maps/{map}              every live entry (up to ?limit=, default 10000)
//   GET    /maps/{map}/{key}        one value
//   PUT    /maps/{map}/{key}        body: the JSON value
//   DELETE /maps/{map}/{key}
//   GET    /maps/{map}/events       WebSocket upgrade: change events as JSON
//   /services, /shards, /reminders,  the registry, placement groups,
//   /members                         reminders and member directory, when
//                                    exposed (see the reference)
//   POST   /query/{name}            ask the cluster; answers when the query ends
//   GET    /ui                      the live cluster page (no token needed for
//                                    the page itself; it asks for one)
//
// It is a separate library (dependency 'barrel_p2p_http') so that an
// application embedding only the core never compiles or links Beast; Beast
// stays out of this header.
//
// Everything runs on the node's strand: handlers are short (a read of the
// projection, a put that hops nowhere), and sessions share no locks.
#pragma once

#include <barrel_p2p/task.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace barrel_p2p {

class node;
class map;
class registry;
class placement;
class reminders;
class members;
class queries;

struct http_api_config {
  /// The admin address. Keep it on loopback (or a private interface): the
  /// surface can write every exposed map.
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 0;  ///< 0: a free port (see port())
  /// When not empty, every request (WebSocket upgrades too) must carry
  /// `Authorization: Bearer <token>`; others get 401.
  std::string bearer_token;
  /// Without a bearer token, a browser on this machine must not be able to
  /// use the API: every request's Host header, and a WebSocket upgrade's or
  /// write's Origin header when present, must name localhost, 127.0.0.1,
  /// ::1, the listen host, or one of these names (ports are ignored, case
  /// is not); others get 421 (Host) or 403 (Origin). This stops DNS
  /// rebinding and cross-site requests. With a token the check is off: a
  /// browser cannot add the Authorization header to such requests.
  std::vector<std::string> allowed_hosts;
  /// Largest request body (a PUT value); larger requests get 413.
  std::size_t max_body_bytes = 1024 * 1024;
  /// Largest request header block; larger requests get 431.
  std::size_t max_header_bytes = 16 * 1024;
  /// Connections served at once; more are closed on accept (counted).
  std::size_t max_connections = 256;
  /// A connection idle (or a request unfinished) this long is closed.
  std::chrono::milliseconds idle_timeout{30'000};
  /// Events buffered per WebSocket subscriber before the oldest are dropped
  /// (the client is told how many, see the reference).
  std::size_t websocket_queue = 1024;
  /// Entries returned by GET /maps/{map} when the request sets no ?limit=.
  std::size_t default_list_limit = 10'000;
  /// The most entries one GET /maps/{map} returns, whatever ?limit= asks
  /// (page on with ?after=).
  std::size_t max_list_limit = 10'000;
};

struct http_api_counters {
  std::uint64_t connections_accepted = 0;
  std::uint64_t connections_rejected = 0;  ///< over max_connections
  std::uint64_t requests = 0;
  std::uint64_t responses_2xx = 0;
  std::uint64_t responses_4xx = 0;
  std::uint64_t responses_5xx = 0;
  std::uint64_t unauthorized = 0;          ///< missing or wrong bearer token
  std::uint64_t foreign_host_or_origin = 0;  ///< refused by the Host/Origin check
  std::uint64_t malformed_requests = 0;    ///< unparsable HTTP, oversized header or body
  std::uint64_t websocket_sessions = 0;    ///< opened since start
  std::uint64_t websocket_events_sent = 0;
  std::uint64_t websocket_events_dropped = 0;  ///< lost by slow subscribers
};

class http_api {
 public:
  /// Serves `n` (which must outlive this object). Throws
  /// std::invalid_argument on a bad config (zero limits or timeout).
  http_api(node& n, http_api_config config = {});
  ~http_api();
  http_api(const http_api&) = delete;
  http_api& operator=(const http_api&) = delete;

  /// Makes `m` reachable under /maps/{name}. Maps not exposed are 404.
  /// May be called before or after start(), from any thread.
  task<> expose(std::shared_ptr<map> m);
  /// Serves the registry under /services, a placement group under
  /// /shards/{group}, reminders under /reminders. Any thread.
  task<> expose(std::shared_ptr<registry> r);
  task<> expose(std::shared_ptr<placement> p);
  task<> expose(std::shared_ptr<reminders> r);
  /// Serves the member directory under /members.
  task<> expose(std::shared_ptr<members> m);
  /// Serves POST /query/{name}, and makes this node answer the query
  /// `barrel_p2p.status` with its GET /status body (the /ui page draws
  /// the cluster from those answers). Any thread.
  task<> expose(std::shared_ptr<queries> q);

  /// Binds and starts accepting. Throws std::system_error when the address
  /// cannot be bound.
  task<> start();
  /// Stops accepting, closes every connection and WebSocket, and returns
  /// once every session has ended. Idempotent.
  task<> stop();

  /// The bound port (after start()).
  [[nodiscard]] std::uint16_t port() const;
  /// A copy of the counters; call on the node's executor.
  [[nodiscard]] http_api_counters counters() const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
