#include "barrel_p2p/http_api.hpp"
#include "barrel_p2p/log.hpp"

#include "barrel_p2p/crdt_wire.hpp"
#include "barrel_p2p/map.hpp"
#include "barrel_p2p/metrics.hpp"
#include "barrel_p2p/node.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "barrel_p2p/queries.hpp"
#include "http_common.hpp"
#include "http_queries.hpp"
#include "http_services.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include <openssl/crypto.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <map>
#include <optional>
#include <stdexcept>

namespace barrel_p2p {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

namespace {

using namespace detail::http_surface;
using ws_stream = websocket::stream<beast::tcp_stream>;

// Token comparison that does not reveal how long a matching prefix is.
bool equal_constant_time(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

json peers_json(const std::vector<peer_descriptor>& peers) {
  json out = json::array();
  for (const auto& p : peers) out.push_back(json{{"id", p.id}, {"address", p.address.to_string()}});
  return out;
}

std::string event_text(const map_event& ev) {
  json j{{"event", ev.what == map_event::kind::put ? "put" : "remove"}, {"key", ev.key}};
  if (ev.what == map_event::kind::put) j["value"] = ev.value;
  return dump(j);
}

std::string dropped_text(std::uint64_t count) { return dump(json{{"event", "dropped"}, {"count", count}}); }

// What a request asks for, once the target is decoded.
struct route {
  enum class kind { status, metrics, maps, map_list, map_key, map_events, unknown } what = kind::unknown;
  std::string map;
  std::string key;
  std::string_view query;
  std::string error;  // a malformed target
};

route parse_target(std::string_view target, bool upgrade) {
  route r;
  auto q = target.find('?');
  auto path = target.substr(0, q);
  if (q != std::string_view::npos) r.query = target.substr(q + 1);
  if (path == "/status") r.what = route::kind::status;
  else if (path == "/metrics") r.what = route::kind::metrics;
  else if (path == "/maps" || path == "/maps/") r.what = route::kind::maps;
  else if (path.starts_with("/maps/")) {
    auto rest = path.substr(6);
    auto slash = rest.find('/');
    auto name = percent_decode(rest.substr(0, slash));
    if (!name) {
      r.error = "bad percent-encoding in the map name";
      return r;
    }
    r.map = std::move(*name);
    if (slash == std::string_view::npos || slash + 1 == rest.size()) {
      r.what = route::kind::map_list;
      return r;
    }
    auto key = percent_decode(rest.substr(slash + 1));
    if (!key) {
      r.error = "bad percent-encoding in the key";
      return r;
    }
    r.key = std::move(*key);
    // The event stream is the upgrade; a plain GET of .../events reads the key "events".
    r.what = (upgrade && rest.substr(slash + 1) == "events") ? route::kind::map_events : route::kind::map_key;
  }
  return r;
}

}  // namespace

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

  void count(http::status s) {
    const auto code = static_cast<unsigned>(s);
    if (code >= 500) ++counts.responses_5xx;
    else if (code >= 400) ++counts.responses_4xx;
    else ++counts.responses_2xx;
  }

  bool authorized(const request& req) const {
    if (config.bearer_token.empty()) return true;
    auto it = req.find(http::field::authorization);
    if (it == req.end()) return false;
    return equal_constant_time(it->value(), "Bearer " + config.bearer_token);
  }

  // A browser cannot set headers on a WebSocket, only subprotocols: it may
  // offer the token as "barrel_p2p.bearer.<token as hex>". The protocol
  // offered with the right token, to echo in the answer; nullopt if none.
  std::optional<std::string> token_protocol(const request& req) const {
    if (config.bearer_token.empty()) return std::nullopt;
    const auto it = req.find(http::field::sec_websocket_protocol);
    if (it == req.end()) return std::nullopt;
    constexpr std::string_view prefix = "barrel_p2p.bearer.";
    std::string_view offered(it->value().data(), it->value().size());
    while (!offered.empty()) {
      const auto comma = offered.find(',');
      auto one = offered.substr(0, comma);
      offered = comma == std::string_view::npos ? std::string_view{} : offered.substr(comma + 1);
      while (!one.empty() && one.front() == ' ') one.remove_prefix(1);
      while (!one.empty() && one.back() == ' ') one.remove_suffix(1);
      if (!one.starts_with(prefix)) continue;
      if (auto token = from_hex(one.substr(prefix.size())); token && equal_constant_time(*token, config.bearer_token))
        return std::string(one);
    }
    return std::nullopt;
  }

  static std::optional<std::string> from_hex(std::string_view hex) {
    if (hex.size() % 2 != 0) return std::nullopt;
    std::string out;
    for (std::size_t i = 0; i < hex.size(); i += 2) {
      unsigned v = 0;
      const auto r = std::from_chars(hex.data() + i, hex.data() + i + 2, v, 16);
      if (r.ec != std::errc{} || r.ptr != hex.data() + i + 2) return std::nullopt;
      out += static_cast<char>(v);
    }
    return out;
  }

  // ---- Host and Origin (see http_api_config::allowed_hosts) ------------------
  // "[::1]:8946" -> "::1", "Node-1:80" -> "node-1", "::1" -> "::1".
  static std::string host_of(std::string_view authority) {
    std::string h;
    if (!authority.empty() && authority.front() == '[') {
      const auto close = authority.find(']');
      h = std::string(authority.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1));
    } else if (std::count(authority.begin(), authority.end(), ':') == 1) {
      h = std::string(authority.substr(0, authority.find(':')));
    } else {
      h = std::string(authority);
    }
    for (auto& ch : h) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return h;
  }
  bool known_host(std::string_view authority) const {
    const auto h = host_of(authority);
    if (h == "localhost" || h == "127.0.0.1" || h == "::1") return true;
    if (h == host_of(config.listen_host) && h != "0.0.0.0" && h != "::") return true;
    return std::any_of(config.allowed_hosts.begin(), config.allowed_hosts.end(),
                       [&](const std::string& a) { return host_of(a) == h; });
  }
  // Nullopt when the request may go on; else the refusal. Only without a
  // token (see the config).
  std::optional<response> foreign(const request& req, bool check_origin) {
    if (!config.bearer_token.empty()) return std::nullopt;
    const auto version = req.version();
    const std::string_view host(req[http::field::host].data(), req[http::field::host].size());
    if (!known_host(host)) {
      ++counts.foreign_host_or_origin;
      return error_response(http::status::misdirected_request, "unknown_host",
                            "Host '" + std::string(host.substr(0, 100)) +
                                "' is not this node's (add it to allowed_hosts, or set a bearer token)",
                            version);
    }
    const auto origin = req.find(http::field::origin);
    if (check_origin && origin != req.end()) {
      const std::string_view value(origin->value().data(), origin->value().size());
      const auto scheme_end = value.find("://");
      const auto rest = scheme_end == std::string_view::npos ? std::string_view{} : value.substr(scheme_end + 3);
      if (rest.empty() || !known_host(rest.substr(0, rest.find('/')))) {
        ++counts.foreign_host_or_origin;
        return error_response(http::status::forbidden, "foreign_origin",
                              "requests from web pages of other sites are refused", version);
      }
    }
    return std::nullopt;
  }

  response unauthorized(unsigned version) {
    ++counts.unauthorized;
    auto res = error_response(http::status::unauthorized, "unauthorized",
                              "this node needs 'Authorization: Bearer <token>'", version);
    res.set(http::field::www_authenticate, "Bearer");
    return res;
  }

  // ---- routes that do not wait ------------------------------------------------
  response status(unsigned version) const { return json_response(http::status::ok, status_body(), version); }

  // GET /status, and this node's answer to the query barrel_p2p.status.
  json status_body() const {
    json maps_json = json::array();
    for (const auto& [name, m] : maps)
      maps_json.push_back(json{{"name", name}, {"size", m->size()}, {"entries", m->entry_count()}});
    const auto uptime = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    json body{{"node", n.id()},
              {"address", n.self().address.to_string()},
              {"uptime_seconds", uptime},
              {"active_view", peers_json(n.membership().active_view())},
              {"passive_view", peers_json(n.membership().passive_view())},
              {"eager_peers", n.broadcast().eager_peers()},
              {"lazy_peers", n.broadcast().lazy_peers()},
              {"connected_peers", n.net().connected_peers()},
              {"clock", clock_json()},
              {"maps", std::move(maps_json)}};
    const auto served = services.status();
    for (const auto& [k, v] : served.items()) body[k] = v;
    return body;
  }

  // The /ui page: static, so served without the bearer token (it asks for
  // one when the API answers 401). Without a token the Host check applies,
  // as to every request.
  response ui(const request& req) const {
    response res{http::status::ok, req.version()};
    res.set(http::field::content_type, "text/html; charset=utf-8");
    res.set(http::field::cache_control, "no-store");
    res.set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:");
    res.body() = std::string(ui_page());
    res.prepare_payload();
    return res;
  }

  // This node's standing against its peers' clocks (docs/concepts/clocks.md).
  json clock_json() const {
    auto& clocks = n.clocks();
    json peers = json::array();
    for (const auto& p : clocks.peers())
      peers.push_back(json{{"id", p.peer_id},
                           {"offset_seconds", to_seconds(p.offset)},
                           {"round_trip_seconds", to_seconds(p.round_trip)},
                           {"samples", p.samples}});
    const auto v = clocks.verdict();
    return json{{"wall_ms", n.sched().wall_ms()},
                {"max_offset_seconds", to_seconds(clocks.max_offset())},
                {"policy", to_string(clocks.config().policy)},
                {"median_offset_seconds", to_seconds(v.median_offset)},
                {"hlc_lead_seconds", to_seconds(v.stamp_lead)},
                {"ahead_of_cluster", clocks.ahead_of_cluster()},
                {"behind_cluster", v.behind_cluster()},
                {"refusing_writes", clocks.refusing_writes()},
                {"peers", std::move(peers)}};
  }

  response metrics(unsigned version) const {
    prometheus_writer w;
    write_node_metrics(w, n);
    std::vector<std::shared_ptr<map>> list;
    for (const auto& [name, m] : maps) list.push_back(m);
    write_map_metrics(w, n, list);
    services.write_metrics(w, n.id());
    queries.write_metrics(w, n.id());
    write_http_metrics(w);
    response res{http::status::ok, version};
    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    res.set(http::field::server, "barrel_p2p");
    res.body() = w.text();
    return res;
  }

  void write_http_metrics(prometheus_writer& w) const {
    const prometheus_writer::labels l{{"node", n.id()}};
    using K = prometheus_writer::kind;
    w.singles(l, {
        {"barrel_p2p_http_connections_accepted_total", K::counter, "HTTP connections accepted.", counts.connections_accepted},
        {"barrel_p2p_http_connections_rejected_total", K::counter, "HTTP connections closed on accept (over max_connections).", counts.connections_rejected},
        {"barrel_p2p_http_connections_open", K::gauge, "HTTP connections open (WebSockets included).", open_sessions.size()},
        {"barrel_p2p_http_requests_total", K::counter, "HTTP requests parsed.", counts.requests},
        {"barrel_p2p_http_responses_2xx_total", K::counter, "Responses with a 1xx-3xx status.", counts.responses_2xx},
        {"barrel_p2p_http_responses_4xx_total", K::counter, "Responses with a 4xx status.", counts.responses_4xx},
        {"barrel_p2p_http_responses_5xx_total", K::counter, "Responses with a 5xx status.", counts.responses_5xx},
        {"barrel_p2p_http_unauthorized_total", K::counter, "Requests without the right bearer token.", counts.unauthorized},
        {"barrel_p2p_http_malformed_requests_total", K::counter, "Unparsable requests, oversized headers or bodies.", counts.malformed_requests},
        {"barrel_p2p_http_foreign_host_or_origin_total", K::counter, "Requests refused by the Host/Origin check (421/403).", counts.foreign_host_or_origin},
        {"barrel_p2p_http_websocket_sessions_total", K::counter, "WebSocket event streams opened.", counts.websocket_sessions},
        {"barrel_p2p_http_websocket_events_sent_total", K::counter, "Change events sent over WebSockets.", counts.websocket_events_sent},
        {"barrel_p2p_http_websocket_events_dropped_total", K::counter, "Change events lost by slow WebSocket clients.", counts.websocket_events_dropped},
    });
  }

  response list_maps(unsigned version) const {
    json out = json::array();
    for (const auto& [name, m] : maps) out.push_back(json{{"name", name}, {"size", m->size()}});
    return json_response(http::status::ok, json{{"maps", std::move(out)}}, version);
  }

  response list_map(const map& m, std::string_view query, unsigned version) const {
    std::size_t limit = config.default_list_limit;
    if (auto l = query_param(query, "limit")) {
      auto r = std::from_chars(l->data(), l->data() + l->size(), limit);
      if (r.ec != std::errc{} || r.ptr != l->data() + l->size())
        return error_response(http::status::bad_request, "bad_limit", "limit must be a non-negative integer",
                              version);
    }
    // At most max_list_limit per page: a listing must not build a response
    // as large as the map. Page on with ?after=<last key>.
    limit = std::min(limit, config.max_list_limit);
    std::optional<std::string> after;
    if (auto a = query_param(query, "after")) {
      after = percent_decode(*a);
      if (!after)
        return error_response(http::status::bad_request, "bad_after", "bad percent-encoding in after", version);
    }
    auto page = m.page(limit, after);
    json entries = json::object();
    std::optional<std::string> last;
    for (auto& [k, v] : page.entries) {
      last = k;
      entries[k] = std::move(v);
    }
    json body{{"map", m.name()}, {"size", page.size}, {"truncated", page.more}, {"entries", std::move(entries)}};
    if (page.more && last) body["next_after"] = *last;
    return json_response(http::status::ok, std::move(body), version);
  }

  // ---- one request ------------------------------------------------------------
  static task<response> handle(std::shared_ptr<impl> self, const request& req) {
    const auto version = req.version();
    if (const std::string_view t(req.target().data(), req.target().size());
        t.substr(0, t.find('?')) == "/ui" || t.substr(0, t.find('?')) == "/ui/") {
      if (auto refusal = self->foreign(req, false)) co_return std::move(*refusal);
      if (req.method() != http::verb::get) co_return method_not_allowed("GET", version);
      co_return self->ui(req);
    }
    if (!self->authorized(req)) co_return self->unauthorized(version);
    // Writes check the Origin too: a page elsewhere must not change a map.
    const bool writes = req.method() != http::verb::get && req.method() != http::verb::head;
    if (auto refusal = self->foreign(req, writes)) co_return std::move(*refusal);
    const std::string_view target(req.target().data(), req.target().size());
    const auto path = target.substr(0, target.find('?'));
    if (query_routes::owns(path)) co_return co_await self->queries.handle(req, path);
    if (service_routes::owns(path)) {
      const auto query = path.size() < target.size() ? target.substr(path.size() + 1) : std::string_view{};
      co_return co_await self->services.handle(req, path, query);
    }
    auto r = parse_target(req.target(), false);
    if (!r.error.empty()) co_return error_response(http::status::bad_request, "bad_target", r.error, version);
    const auto method = req.method();
    switch (r.what) {
      case route::kind::status:
        if (method != http::verb::get) co_return method_not_allowed("GET", version);
        co_return self->status(version);
      case route::kind::metrics:
        if (method != http::verb::get) co_return method_not_allowed("GET", version);
        co_return self->metrics(version);
      case route::kind::maps:
        if (method != http::verb::get) co_return method_not_allowed("GET", version);
        co_return self->list_maps(version);
      case route::kind::unknown:
      case route::kind::map_events:
        co_return error_response(http::status::not_found, "not_found",
                                 "no route for " + std::string(req.target()), version);
      case route::kind::map_list:
      case route::kind::map_key:
        break;
    }
    auto m = self->find_map(r.map);
    if (!m)
      co_return error_response(http::status::not_found, "unknown_map",
                               "no map named '" + r.map + "' is served by this node", version);
    if (r.what == route::kind::map_list) {
      if (method != http::verb::get) co_return method_not_allowed("GET", version);
      co_return self->list_map(*m, r.query, version);
    }
    if (r.key.size() > crdt_wire::limits{}.max_key_bytes)
      co_return error_response(http::status::bad_request, "key_too_long",
                               "keys are at most " + std::to_string(crdt_wire::limits{}.max_key_bytes) + " bytes", version);
    switch (method) {
      case http::verb::get: {
        auto v = m->get(r.key);
        if (!v) co_return error_response(http::status::not_found, "not_found", "no key '" + r.key + "'", version);
        co_return json_response(http::status::ok, key_value(r.key, *v), version);
      }
      case http::verb::put: {
        std::string why;
        auto value = parse_value(req.body(), why);
        if (!value) co_return error_response(http::status::bad_request, "bad_json", why, version);
        co_return co_await write(self, m, r.key, std::move(value), version);
      }
      case http::verb::delete_:
        co_return co_await write(self, m, r.key, std::nullopt, version);
      default:
        co_return method_not_allowed("GET, PUT, DELETE", version);
    }
  }

  static json key_value(const std::string& key, const json& value) { return json{{"key", key}, {"value", value}}; }
  static json key_ok(const std::string& key) { return json{{"key", key}, {"ok", true}}; }

  // A put (with a value) or a remove, and what its failure means to the
  // client: a closed map (the node is stopping) is unavailable, anything
  // else the map refuses is the validator's verdict, and any other error
  // (the disk, most likely) means the write did not happen.
  static task<response> write(std::shared_ptr<impl> self, std::shared_ptr<map> m, std::string key,
                              std::optional<json> value, unsigned version) {
    std::optional<response> failure;
    std::exception_ptr failed;
    try {
      if (value) co_await m->put(key, std::move(*value));
      else co_await m->remove(key);
    } catch (const map_error& e) {
      // An open map refusing the value is the validator's verdict; a
      // closed one (the node is stopping) is write_failure's map_closed.
      if (m->is_open()) failure = error_response(http::status::unprocessable_entity, "rejected", e.what(), version);
      else failed = std::current_exception();
    } catch (...) {
      failed = std::current_exception();
    }
    if (failed) failure = write_failure(failed, version, [&](const std::string& line) { self->log(line); });
    if (failure) co_return std::move(*failure);
    co_return json_response(http::status::ok, key_ok(key), version);
  }

  // ---- connections --------------------------------------------------------------
  struct session_guard {
    impl& self;
    std::uint64_t id;
    ~session_guard() { self.open_sessions.erase(id); }
  };

  static task<> write_response(beast::tcp_stream& stream, response& res, std::chrono::milliseconds timeout,
                               bool& ok) {
    res.prepare_payload();
    stream.expires_after(timeout);
    auto [ec, n] = co_await http::async_write(stream, res, tuple_awaitable);
    ok = !ec;
  }

  static task<> session(std::shared_ptr<impl> self, tcp::socket socket) {
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

  // After answering a request we did not read to its end: closing with
  // unread bytes would reset the connection and could destroy the answer
  // before the client reads it. Half-close, then drain briefly.
  static task<> lingering_close(beast::tcp_stream& stream) {
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

  // ---- the WebSocket event stream --------------------------------------------
  static task<> events_session(std::shared_ptr<impl> self, beast::tcp_stream& stream, request& req,
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

  // Client messages are ignored, but a read must be pending for Beast to
  // answer pings and the closing handshake.
  static task<> discard_reads(ws_stream& ws) {
    beast::flat_buffer buffer;
    for (;;) {
      auto [ec, n] = co_await ws.async_read(buffer, tuple_awaitable);
      if (ec) co_return;
      buffer.consume(buffer.size());
    }
  }

  // A map's change events, or the refusal.
  std::optional<text_events> map_events(beast::string_view target, unsigned version, std::optional<response>& refusal) {
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
  static task<std::optional<std::string>> next_map_text(std::shared_ptr<event_stream<map_event>> events) {
    auto ev = co_await events->next();
    if (!ev) co_return std::nullopt;
    co_return event_text(*ev);
  }

  static task<> send_events(std::shared_ptr<impl> self, ws_stream& ws, text_events& events) {
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

  // ---- lifecycle ------------------------------------------------------------------
  static task<> accept_loop(std::shared_ptr<impl> self) {
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

  static task<> do_start(std::shared_ptr<impl> self) {
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

  // A static coroutine, not a capturing lambda: GCC 12 released the captured
  // shared_ptr once too often (docs/how-to/contributing.md).
  static task<> do_expose(std::shared_ptr<impl> self, std::shared_ptr<map> m) {
    self->maps[m->name()] = std::move(m);
    co_return;
  }

  template <class T>
  static task<> do_expose_service(std::shared_ptr<impl> self, std::shared_ptr<T> s) {
    self->services.expose(std::move(s));
    co_return;
  }

  static task<> do_expose_queries(std::shared_ptr<impl> self, std::shared_ptr<barrel_p2p::queries> q) {
    std::weak_ptr<impl> weak = self;
    q->handle("barrel_p2p.status", [weak](query_request) { return status_answer(weak); });
    self->queries.expose(std::move(q));
    co_return;
  }

  static task<std::optional<json>> status_answer(std::weak_ptr<impl> weak) {
    auto self = weak.lock();
    if (!self || self->stopped) co_return std::nullopt;
    co_return self->status_body();
  }

  static task<> do_stop(std::shared_ptr<impl> self) {
    if (self->stopped) co_return;
    self->stopped = true;
    self->running = false;
    if (self->acceptor) {
      beast::error_code ec;
      self->acceptor->close(ec);
    }
    // Closing the sockets ends reads that cancellation alone may not reach.
    auto closers = self->open_sessions;
    for (auto& [id, close] : closers) close();
    co_await self->loops.stop();
  }
};

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
    i->stopped = true;
    i->running = false;
    beast::error_code ec;
    if (i->acceptor) i->acceptor->close(ec);
    auto closers = i->open_sessions;
    for (auto& [id, close] : closers) close();
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
