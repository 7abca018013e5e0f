// The HTTP admin surface: real nodes over loopback TCP, a real HTTP client.
#include <barrel_p2p/http_api.hpp>
#include <barrel_p2p/map.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include <doctest/doctest.h>

#include "http_client.hpp"
#include "cluster.hpp"

#include <atomic>
#include <cmath>
#include <filesystem>
#include <regex>
#include <set>
#include <sstream>
#include <unistd.h>

using namespace barrel_p2p;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using testing::reply;
using testing::send_request;

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

node_config config_for(const std::string& id) { return testing::fast_tcp_config(id, "http-test-cluster-secret"); }

// Two nodes of the one fixture (cluster.hpp), each serving map "kv" (and
// "strict", which takes only numbers) over HTTP.
struct fixture : testing::cluster<testing::tcp_net> {
  std::vector<std::unique_ptr<http_api>> apis;
  std::vector<std::shared_ptr<map>> kv;

  explicit fixture(http_api_config base = {}, std::size_t count = 2) {
    for (std::size_t i = 0; i < count; ++i) {
      auto& n = add("n" + std::to_string(i));
      kv.push_back(map::open(n, "kv"));
      map_options strict;
      strict.validator = [](const std::string&, const json& v) { return v.is_number(); };
      auto s = map::open(n, "strict", strict);
      apis.push_back(std::make_unique<http_api>(n, base));
      auto& api = *apis.back();
      run([&]() -> task<> {
        co_await api.expose(kv.back());
        co_await api.expose(s);
        co_await api.start();
      });
    }
    REQUIRE(eventually([&] {
      for (auto& n : nodes)
        if (n->membership().active_view().size() + 1 < nodes.size()) return false;
      return true;
    }));
  }
  ~fixture() {
    run([&]() -> task<> {
      for (auto& a : apis) co_await a->stop();
    });
    stop_all();
  }

  std::uint16_t port(std::size_t i = 0) const { return apis[i]->port(); }
};

// Writes raw bytes, then reads whatever comes back until the server closes.
task<std::string> send_raw(std::uint16_t port, std::string bytes, bool half_close = true) {
  tcp::socket socket(co_await asio::this_coro::executor);
  co_await socket.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), asio::use_awaitable);
  co_await asio::async_write(socket, asio::buffer(bytes), tuple_awaitable);
  if (half_close) socket.shutdown(tcp::socket::shutdown_send);
  std::string out;
  char buf[4096];
  for (;;) {
    auto [ec, n] = co_await socket.async_read_some(asio::buffer(buf), tuple_awaitable);
    out.append(buf, n);
    if (ec) break;
  }
  co_return out;
}

}  // namespace

TEST_CASE("HTTP: a PUT on one node is readable through the other; DELETE removes it everywhere") {
  fixture f;
  reply put, got, list, del, after;
  f.run([&]() -> task<> {
    put = co_await send_request(f.port(0), http::verb::put, "/maps/kv/greeting", R"({"hello":"world"})");
  });
  CHECK(put.status == 200);
  CHECK(put.content_type == "application/json");
  REQUIRE(f.eventually([&] { return f.kv[1]->get("greeting").has_value(); }));
  f.run([&]() -> task<> {
    got = co_await send_request(f.port(1), http::verb::get, "/maps/kv/greeting");
    list = co_await send_request(f.port(1), http::verb::get, "/maps/kv");
  });
  CHECK(got.status == 200);
  CHECK(got.body_json() == json{{"key", "greeting"}, {"value", {{"hello", "world"}}}});
  CHECK(list.body_json()["entries"] == json{{"greeting", {{"hello", "world"}}}});
  CHECK(list.body_json()["size"] == 1);

  f.run([&]() -> task<> { del = co_await send_request(f.port(1), http::verb::delete_, "/maps/kv/greeting"); });
  CHECK(del.status == 200);
  REQUIRE(f.eventually([&] { return !f.kv[0]->get("greeting").has_value(); }));
  f.run([&]() -> task<> { after = co_await send_request(f.port(0), http::verb::get, "/maps/kv/greeting"); });
  CHECK(after.status == 404);
  CHECK(after.body_json()["error"] == "not_found");
}

TEST_CASE("HTTP: keys are percent-decoded and may hold slashes; ?limit= truncates a listing") {
  fixture f(http_api_config{}, 1);
  reply put, got, list, bad;
  f.run([&]() -> task<> {
    put = co_await send_request(f.port(), http::verb::put, "/maps/kv/a%20b/c", "1");
    co_await send_request(f.port(), http::verb::put, "/maps/kv/z", "2");
    got = co_await send_request(f.port(), http::verb::get, "/maps/kv/a%20b/c");
    list = co_await send_request(f.port(), http::verb::get, "/maps/kv?limit=1");
    bad = co_await send_request(f.port(), http::verb::get, "/maps/kv/%zz");
  });
  CHECK(put.status == 200);
  CHECK(f.kv[0]->get("a b/c") == json(1));
  CHECK(got.body_json()["value"] == 1);
  CHECK(list.body_json()["truncated"] == true);
  CHECK(list.body_json()["entries"].size() == 1);
  CHECK(list.body_json()["size"] == 2);
  CHECK(bad.status == 400);
}

TEST_CASE("HTTP: a listing is capped at max_list_limit and pages on with ?after=") {
  http_api_config cfg;
  cfg.max_list_limit = 2;
  fixture f(cfg, 1);
  std::vector<reply> pages;
  f.run([&]() -> task<> {
    for (const char* k : {"d", "b", "e", "a", "c"}) co_await f.kv[0]->put(k, 1);
    std::string target = "/maps/kv?limit=100";
    for (int i = 0; i < 10; ++i) {
      pages.push_back(co_await send_request(f.port(), http::verb::get, target));
      const auto body = pages.back().body_json();
      if (!body.contains("next_after")) break;
      target = "/maps/kv?limit=100&after=" + body["next_after"].get<std::string>();
    }
  });
  std::vector<std::string> keys;
  for (const auto& p : pages) {
    CHECK(p.status == 200);
    CHECK(p.body_json()["size"] == 5);
    CHECK(p.body_json()["entries"].size() <= 2);
    const auto body = p.body_json();  // kept: items() of a temporary would dangle
    for (const auto& [k, v] : body["entries"].items()) keys.push_back(k);
  }
  CHECK(keys == std::vector<std::string>{"a", "b", "c", "d", "e"});
  REQUIRE(pages.size() == 3);
  CHECK(pages[0].body_json()["truncated"] == true);
  CHECK(pages[2].body_json()["truncated"] == false);
}

TEST_CASE("HTTP: a full disk answers 507 disk_full and changes nothing; the next PUT with room is 200") {
  const auto dir = std::filesystem::temp_directory_path() / ("barrel_p2p_http_disk_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  asio::io_context io;
  auto c = config_for("disk");
  c.data_dir = dir;
  node n(io.get_executor(), c);
  std::atomic<int> write_errno{0};
  map_options o;
  o.persist = true;
  o.disk_faults = [&](disk_op op, std::size_t&) { return op == disk_op::write ? write_errno.load() : 0; };
  auto m = map::open(n, "kv", o);
  http_api api(n, {});
  reply full, ok;
  testing::run(io, [&]() -> task<> {
    co_await n.start();
    co_await api.expose(m);
    co_await api.start();
    write_errno = ENOSPC;
    full = co_await send_request(api.port(), http::verb::put, "/maps/kv/k", "1");
    write_errno = 0;
    ok = co_await send_request(api.port(), http::verb::put, "/maps/kv/j", "2");
    co_await api.stop();
    co_await n.stop();
  });
  CHECK(full.status == 507);
  CHECK(full.body_json()["error"] == "disk_full");
  CHECK_FALSE(m->get("k").has_value());
  CHECK(ok.status == 200);
  CHECK(m->counters().write_failures == 1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("HTTP: /status shows the node, its views and its maps; /maps lists them") {
  fixture f;
  reply status, maps;
  f.run([&]() -> task<> {
    co_await send_request(f.port(), http::verb::put, "/maps/kv/k", "\"v\"");
    status = co_await send_request(f.port(), http::verb::get, "/status");
    maps = co_await send_request(f.port(), http::verb::get, "/maps");
  });
  REQUIRE(status.status == 200);
  auto s = status.body_json();
  CHECK(s["node"] == "n0");
  CHECK(s["address"] == f.nodes[0]->self().address.to_string());
  REQUIRE(s["active_view"].size() == 1);
  CHECK(s["active_view"][0]["id"] == "n1");
  CHECK(s["uptime_seconds"].is_number());
  CHECK(s["maps"] == json::array({{{"entries", 1}, {"name", "kv"}, {"size", 1}},
                                  {{"entries", 0}, {"name", "strict"}, {"size", 0}}}));
  CHECK(maps.body_json()["maps"].size() == 2);
  // The clock section: both nodes read this host's clock, so n1 is ~0 s off.
  const auto& clock = s["clock"];
  CHECK(clock["policy"] == "refuse");
  CHECK(clock["max_offset_seconds"] == 60.0);
  CHECK(clock["refusing_writes"] == false);
  CHECK(clock["ahead_of_cluster"] == false);
  REQUIRE(f.eventually([&] { return !f.nodes[0]->clocks().peers().empty(); }));
  f.run([&]() -> task<> { status = co_await send_request(f.port(), http::verb::get, "/status"); });
  const auto peers = status.body_json()["clock"]["peers"];
  REQUIRE(peers.size() == 1);
  CHECK(peers[0]["id"] == "n1");
  CHECK(std::abs(peers[0]["offset_seconds"].get<double>()) < 1.0);
  CHECK(peers[0]["samples"].get<int>() >= 1);
}

TEST_CASE("HTTP: /metrics is valid Prometheus text covering every layer") {
  fixture f;
  reply m;
  f.run([&]() -> task<> {
    co_await send_request(f.port(), http::verb::put, "/maps/kv/k", "1");
    m = co_await send_request(f.port(), http::verb::get, "/metrics");
  });
  REQUIRE(m.status == 200);
  CHECK(m.content_type.starts_with("text/plain; version=0.0.4"));
  const std::regex sample(R"(^([a-z_][a-z0-9_]*)\{([a-z_][a-z0-9_]*="[^"\\]*",?)+\} (-?[0-9.e+]+|NaN)$)");
  std::set<std::string> typed, sampled;
  std::istringstream lines(m.body);
  std::string line;
  std::size_t samples = 0;
  while (std::getline(lines, line)) {
    if (line.starts_with("# TYPE ")) {
      auto name = line.substr(7, line.find(' ', 7) - 7);
      CHECK_MESSAGE(typed.insert(name).second, "family declared twice: " << name);
      continue;
    }
    if (line.starts_with("# HELP ")) continue;
    std::smatch match;
    REQUIRE_MESSAGE(std::regex_match(line, match, sample), "not a sample line: " << line);
    CHECK_MESSAGE(typed.contains(match[1].str()), "sample before its TYPE: " << line);
    sampled.insert(match[1].str());
    ++samples;
  }
  CHECK(samples > 60);
  for (const char* name : {"barrel_p2p_transport_bytes_sent_total", "barrel_p2p_membership_active_view_size",
                           "barrel_p2p_broadcast_gossip_sent_total", "barrel_p2p_map_keys",
                           "barrel_p2p_replica_deltas_sent_total", "barrel_p2p_http_requests_total"})
    CHECK_MESSAGE(sampled.contains(name), name);
  CHECK(m.body.find("barrel_p2p_map_puts_total{node=\"n0\",map=\"kv\"} 1\n") != std::string::npos);
  CHECK(m.body.find("barrel_p2p_membership_active_view_size{node=\"n0\"} 1\n") != std::string::npos);
  CHECK(m.body.find("barrel_p2p_map_rejected_remote_total{node=\"n0\",map=\"kv\",reason=\"clock_ahead\"} 0\n") !=
        std::string::npos);
  CHECK(m.body.find("barrel_p2p_clock_refusing_writes{node=\"n0\"} 0\n") != std::string::npos);
  CHECK(typed.contains("barrel_p2p_peer_clock_offset_seconds"));
  CHECK(sampled.contains("barrel_p2p_clock_probes_sent_total"));
}

TEST_CASE("HTTP: bad input gets a clear 4xx with a JSON body, and the node keeps serving") {
  http_api_config c;
  c.max_body_bytes = 1000;
  fixture f(c, 1);
  std::map<std::string, reply> r;
  f.run([&]() -> task<> {
    r["bad json"] = co_await send_request(f.port(), http::verb::put, "/maps/kv/k", "{\"a\":");
    r["empty body"] = co_await send_request(f.port(), http::verb::put, "/maps/kv/k", "");
    r["too deep"] = co_await send_request(f.port(), http::verb::put, "/maps/kv/k", std::string(40, '[') + std::string(40, ']'));
    r["unknown map"] = co_await send_request(f.port(), http::verb::get, "/maps/nope/k");
    r["unknown route"] = co_await send_request(f.port(), http::verb::get, "/nope");
    r["method"] = co_await send_request(f.port(), http::verb::post, "/maps/kv/k", "1");
    r["rejected"] = co_await send_request(f.port(), http::verb::put, "/maps/strict/k", "\"not a number\"");
    r["long key"] = co_await send_request(f.port(), http::verb::put, "/maps/kv/" + std::string(1100, 'k'), "1");
    r["bad limit"] = co_await send_request(f.port(), http::verb::get, "/maps/kv?limit=x");
  });
  auto expect = [&](const std::string& what, unsigned status, const std::string& code) {
    INFO(what);
    CHECK(r[what].status == status);
    CHECK(r[what].content_type == "application/json");
    CHECK(r[what].body_json()["error"] == code);
    CHECK(r[what].body_json()["detail"].is_string());
  };
  expect("bad json", 400, "bad_json");
  expect("empty body", 400, "bad_json");
  expect("too deep", 400, "bad_json");
  expect("unknown map", 404, "unknown_map");
  expect("unknown route", 404, "not_found");
  expect("method", 405, "method_not_allowed");
  expect("rejected", 422, "rejected");
  expect("long key", 400, "key_too_long");
  expect("bad limit", 400, "bad_limit");
  CHECK(f.kv[0]->size() == 0);
  CHECK(f.apis[0]->counters().responses_4xx == 9);

  // Below HTTP: an oversized body, garbage, a truncated request, huge headers.
  std::string oversized, garbage, truncated, huge_header;
  f.run([&]() -> task<> {
    oversized = co_await send_raw(f.port(), "PUT /maps/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" +
                                                 std::string(5000, '1'));
    garbage = co_await send_raw(f.port(), std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 15));
    truncated = co_await send_raw(f.port(), "PUT /maps/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n12");
    huge_header = co_await send_raw(f.port(), "GET /status HTTP/1.1\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n");
  });
  CHECK(oversized.starts_with("HTTP/1.1 413"));
  CHECK(oversized.find("body_too_large") != std::string::npos);
  CHECK(garbage.starts_with("HTTP/1.1 400"));
  CHECK(truncated.empty());  // the client went away mid-body: nothing to answer
  CHECK(huge_header.starts_with("HTTP/1.1 431"));
  CHECK(f.apis[0]->counters().malformed_requests == 3);

  reply still;
  f.run([&]() -> task<> { still = co_await send_request(f.port(), http::verb::get, "/status"); });
  CHECK(still.status == 200);
  CHECK(f.kv[0]->size() == 0);
}

TEST_CASE("HTTP: with a bearer token, requests without it get 401") {
  http_api_config c;
  c.bearer_token = "let-me-in";
  fixture f(c, 1);
  reply none, wrong, right, ws_refused;
  f.run([&]() -> task<> {
    none = co_await send_request(f.port(), http::verb::get, "/status");
    wrong = co_await send_request(f.port(), http::verb::put, "/maps/kv/k", "1", "let-me-out");
    right = co_await send_request(f.port(), http::verb::put, "/maps/kv/k", "1", "let-me-in");
  });
  CHECK(none.status == 401);
  CHECK(none.body_json()["error"] == "unauthorized");
  CHECK(wrong.status == 401);
  CHECK(right.status == 200);
  CHECK(f.kv[0]->get("k") == json(1));
  CHECK(f.apis[0]->counters().unauthorized == 2);

  // A WebSocket upgrade without the token is refused too.
  bool handshake_failed = false;
  f.run([&]() -> task<> {
    websocket::stream<beast::tcp_stream> ws(co_await asio::this_coro::executor);
    co_await beast::get_lowest_layer(ws).async_connect(
        tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()), asio::use_awaitable);
    auto [ec] = co_await ws.async_handshake("127.0.0.1", "/maps/kv/events", tuple_awaitable);
    handshake_failed = static_cast<bool>(ec);
  });
  CHECK(handshake_failed);

  // A browser offers the token as a subprotocol (hex): accepted and echoed;
  // a wrong one is refused.
  auto offer = [&](std::string protocols, std::string& echoed) {
    bool ok = false;
    f.run([&]() -> task<> {
      websocket::stream<beast::tcp_stream> ws(co_await asio::this_coro::executor);
      co_await beast::get_lowest_layer(ws).async_connect(
          tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()), asio::use_awaitable);
      ws.set_option(websocket::stream_base::decorator(
          [protocols](websocket::request_type& r) { r.set(http::field::sec_websocket_protocol, protocols); }));
      websocket::response_type res;
      auto [ec] = co_await ws.async_handshake(res, "127.0.0.1", "/maps/kv/events", tuple_awaitable);
      ok = !ec;
      echoed = std::string(res[http::field::sec_websocket_protocol]);
      if (ok) co_await ws.async_close(websocket::close_code::normal, tuple_awaitable);
    });
    return ok;
  };
  std::string echoed;
  const std::string right_hex = "6c65742d6d652d696e";  // "let-me-in"
  CHECK(offer("chat, barrel_p2p.bearer." + right_hex, echoed));
  CHECK(echoed == "barrel_p2p.bearer." + right_hex);
  CHECK_FALSE(offer("barrel_p2p.bearer.6c65742d6d652d6f7574", echoed));  // "let-me-out"
  CHECK_FALSE(offer("barrel_p2p.bearer.zz", echoed));
}

// A web page on this machine, without a token: DNS rebinding gives its
// requests a foreign Host; a cross-site request or WebSocket carries a
// foreign Origin. Neither may read or write a map.
TEST_CASE("HTTP: without a token, foreign Host and Origin headers are refused (DNS rebinding, cross-site)") {
  http_api_config c;
  c.allowed_hosts = {"node1.internal"};
  fixture f(c, 1);
  auto raw_request = [&](std::string host, std::string origin, std::string method, std::string target) {
    std::string req = method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\n";
    if (!origin.empty()) req += "Origin: " + origin + "\r\n";
    if (method == "PUT") req += "Content-Length: 1\r\n\r\n1";
    else req += "\r\n";
    std::string out;
    f.run([&]() -> task<> { out = co_await send_raw(f.port(), req); });
    return out.substr(0, out.find("\r\n"));
  };
  const auto port = std::to_string(f.port());
  CHECK(raw_request("127.0.0.1:" + port, "", "GET", "/status") == "HTTP/1.1 200 OK");
  CHECK(raw_request("localhost:" + port, "", "GET", "/status") == "HTTP/1.1 200 OK");
  CHECK(raw_request("[::1]:" + port, "", "GET", "/status") == "HTTP/1.1 200 OK");
  CHECK(raw_request("Node1.Internal", "", "GET", "/status") == "HTTP/1.1 200 OK");
  CHECK(raw_request("attacker.example:" + port, "", "GET", "/maps/kv") == "HTTP/1.1 421 Misdirected Request");
  CHECK(raw_request("attacker.example", "", "PUT", "/maps/kv/k") == "HTTP/1.1 421 Misdirected Request");
  CHECK(raw_request("127.0.0.1:" + port, "http://attacker.example", "PUT", "/maps/kv/k") == "HTTP/1.1 403 Forbidden");
  CHECK(raw_request("127.0.0.1:" + port, "null", "PUT", "/maps/kv/k") == "HTTP/1.1 403 Forbidden");
  CHECK(raw_request("127.0.0.1:" + port, "http://localhost:3000", "PUT", "/maps/kv/k") == "HTTP/1.1 200 OK");
  CHECK(f.apis[0]->counters().foreign_host_or_origin == 4);
  CHECK(f.kv[0]->get("k") == json(1));  // only the allowed PUT wrote

  // A WebSocket from a page of another site is refused; one without an
  // Origin (not a browser) is served.
  bool foreign_refused = false, plain_served = false;
  f.run([&]() -> task<> {
    websocket::stream<beast::tcp_stream> ws(co_await asio::this_coro::executor);
    ws.set_option(websocket::stream_base::decorator(
        [](websocket::request_type& r) { r.set(http::field::origin, "https://attacker.example"); }));
    co_await beast::get_lowest_layer(ws).async_connect(
        tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()), asio::use_awaitable);
    auto [ec] = co_await ws.async_handshake("127.0.0.1", "/maps/kv/events", tuple_awaitable);
    foreign_refused = static_cast<bool>(ec);
    websocket::stream<beast::tcp_stream> ok(co_await asio::this_coro::executor);
    co_await beast::get_lowest_layer(ok).async_connect(
        tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()), asio::use_awaitable);
    auto [ec2] = co_await ok.async_handshake("127.0.0.1", "/maps/kv/events", tuple_awaitable);
    plain_served = !ec2;
    if (plain_served) co_await ok.async_close(websocket::close_code::normal, tuple_awaitable);
  });
  CHECK(foreign_refused);
  CHECK(plain_served);
}

TEST_CASE("HTTP: /maps/{map}/events streams local and remote changes over a WebSocket") {
  fixture f;
  std::vector<json> received;
  f.run([&]() -> task<> {
    websocket::stream<beast::tcp_stream> ws(co_await asio::this_coro::executor);
    co_await beast::get_lowest_layer(ws).async_connect(
        tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port(0)), asio::use_awaitable);
    co_await ws.async_handshake("127.0.0.1", "/maps/kv/events", asio::use_awaitable);
    // A remote write (through node 1) and a local remove (through node 0).
    co_await send_request(f.port(1), http::verb::put, "/maps/kv/x", "42");
    beast::flat_buffer buffer;
    co_await ws.async_read(buffer, asio::use_awaitable);
    received.push_back(json::parse(beast::buffers_to_string(buffer.data())));
    buffer.consume(buffer.size());
    co_await send_request(f.port(0), http::verb::delete_, "/maps/kv/x");
    co_await ws.async_read(buffer, asio::use_awaitable);
    received.push_back(json::parse(beast::buffers_to_string(buffer.data())));
    co_await ws.async_close(websocket::close_code::normal, asio::use_awaitable);
  });
  REQUIRE(received.size() == 2);
  CHECK(received[0] == json{{"event", "put"}, {"key", "x"}, {"value", 42}});
  CHECK(received[1] == json{{"event", "remove"}, {"key", "x"}});
  CHECK(f.apis[0]->counters().websocket_sessions == 1);
  CHECK(f.apis[0]->counters().websocket_events_sent == 2);
}

TEST_CASE("HTTP: stop() closes open WebSockets and idle connections and returns") {
  fixture f(http_api_config{}, 1);
  bool ws_ended = false;
  bool idle_ended = false;
  f.run([&]() -> task<> {
    auto ex = co_await asio::this_coro::executor;
    websocket::stream<beast::tcp_stream> ws(ex);
    co_await beast::get_lowest_layer(ws).async_connect(
        tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()), asio::use_awaitable);
    co_await ws.async_handshake("127.0.0.1", "/maps/kv/events", asio::use_awaitable);
    tcp::socket idle(ex);
    co_await idle.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()), asio::use_awaitable);
    co_await f.apis[0]->stop();
    beast::flat_buffer buffer;
    auto [ec, n] = co_await ws.async_read(buffer, tuple_awaitable);
    ws_ended = static_cast<bool>(ec);
    char c;
    auto [ec2, n2] = co_await idle.async_read_some(asio::buffer(&c, 1), tuple_awaitable);
    idle_ended = static_cast<bool>(ec2);
  });
  CHECK(ws_ended);
  CHECK(idle_ended);
}

TEST_CASE("HTTP: connections over max_connections are closed on accept and counted") {
  http_api_config c;
  c.max_connections = 1;
  fixture f(c, 1);
  std::string second;
  reply after;
  f.run([&]() -> task<> {
    tcp::socket first(co_await asio::this_coro::executor);
    co_await first.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()), asio::use_awaitable);
    second = co_await send_raw(f.port(), "GET /status HTTP/1.1\r\nHost: x\r\n\r\n", false);
    first.close();
  });
  CHECK(second.empty());
  CHECK(f.apis[0]->counters().connections_rejected == 1);
  // Once the server has seen the first connection close, requests are served
  // again (until then a new connection may still be refused: retry).
  bool served = false;
  f.run([&]() -> task<> {
    auto sched = make_real_scheduler(co_await asio::this_coro::executor);
    for (int attempt = 0; attempt < 500 && !served; ++attempt) {
      bool refused = false;
      try {
        after = co_await send_request(f.port(), http::verb::get, "/status");
        served = after.status == 200;
      } catch (const std::exception&) {
        refused = true;
      }
      if (refused) co_await sched->sleep(10ms);
    }
  });
  CHECK(served);
}
