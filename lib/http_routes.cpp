// The HTTP admin surface: who may ask (token, Host and Origin checks),
// routing, and the handlers of /status, /metrics, /ui and /maps
// (http_api_impl.hpp).
#include "http_api_impl.hpp"


#include "barrel_p2p/crdt_wire.hpp"
#include "barrel_p2p/metrics.hpp"

#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>
#include <charconv>

namespace barrel_p2p {
namespace {

// Token comparison that does not reveal how long a matching prefix is.
bool equal_constant_time(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

json peers_json(const std::vector<peer_descriptor>& peers) {
  json out = json::array();
  for (const auto& p : peers) out.push_back(json{{"id", p.id}, {"address", p.address.to_string()}});
  return out;
}


}  // namespace

namespace detail::http_surface {

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

}  // namespace detail::http_surface

bool http_api::impl::authorized(const request& req) const {
  if (config.bearer_token.empty()) return true;
  auto it = req.find(http::field::authorization);
  if (it == req.end()) return false;
  return equal_constant_time(it->value(), "Bearer " + config.bearer_token);
}

std::optional<std::string> http_api::impl::token_protocol(const request& req) const {
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

std::optional<std::string> http_api::impl::from_hex(std::string_view hex) {
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

std::string http_api::impl::host_of(std::string_view authority) {
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

bool http_api::impl::known_host(std::string_view authority) const {
  const auto h = host_of(authority);
  if (h == "localhost" || h == "127.0.0.1" || h == "::1") return true;
  if (h == host_of(config.listen_host) && h != "0.0.0.0" && h != "::") return true;
  return std::any_of(config.allowed_hosts.begin(), config.allowed_hosts.end(),
                     [&](const std::string& a) { return host_of(a) == h; });
}

std::optional<response> http_api::impl::foreign(const request& req, bool check_origin) {
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

response http_api::impl::unauthorized(unsigned version) {
  ++counts.unauthorized;
  auto res = error_response(http::status::unauthorized, "unauthorized",
                            "this node needs 'Authorization: Bearer <token>'", version);
  res.set(http::field::www_authenticate, "Bearer");
  return res;
}

json http_api::impl::status_body() const {
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

response http_api::impl::ui(const request& req) const {
  response res{http::status::ok, req.version()};
  res.set(http::field::content_type, "text/html; charset=utf-8");
  res.set(http::field::cache_control, "no-store");
  res.set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:");
  res.body() = std::string(ui_page());
  res.prepare_payload();
  return res;
}

json http_api::impl::clock_json() const {
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

response http_api::impl::metrics(unsigned version) const {
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

void http_api::impl::write_http_metrics(prometheus_writer& w) const {
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

response http_api::impl::list_maps(unsigned version) const {
  json out = json::array();
  for (const auto& [name, m] : maps) out.push_back(json{{"name", name}, {"size", m->size()}});
  return json_response(http::status::ok, json{{"maps", std::move(out)}}, version);
}

response http_api::impl::list_map(const map& m, std::string_view query, unsigned version) const {
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

task<response> http_api::impl::handle(std::shared_ptr<impl> self, const request& req) {
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

task<response> http_api::impl::write(std::shared_ptr<impl> self, std::shared_ptr<map> m, std::string key,
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

}  // namespace barrel_p2p
