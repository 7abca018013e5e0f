// The HTTP routes of the registry, placement groups and reminders: real
// nodes over loopback TCP, a real HTTP client.
#include <barrel_p2p/http_api.hpp>
#include <barrel_p2p/members.hpp>
#include <barrel_p2p/placement.hpp>
#include <barrel_p2p/queries.hpp>
#include <barrel_p2p/registry.hpp>
#include <barrel_p2p/reminders.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/beast/websocket.hpp>

#include <doctest/doctest.h>

#include "http_client.hpp"
#include "cluster.hpp"

#include <set>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

namespace {

member_tags tags_of(const std::string& id) {
  member_tags t;
  t["role"] = id == "n0" ? "db" : "web";
  t["zone"] = "a";
  return t;
}

// Two nodes serving their registry, placement group "jobs" and reminders.
struct services_fixture {
  cluster<tcp_net> c;
  std::vector<std::filesystem::path> dirs;
  std::vector<std::unique_ptr<http_api>> apis;
  std::vector<std::shared_ptr<registry>> regs;
  std::vector<std::shared_ptr<placement>> groups;
  std::vector<std::shared_ptr<reminders>> timers;
  std::vector<std::shared_ptr<members>> directory;
  std::vector<std::shared_ptr<queries>> asked;

  services_fixture() {
    for (int i = 0; i < 2; ++i) {
      dirs.push_back(temp_dir("http_services" + std::to_string(i)));
      auto& n = c.add("n" + std::to_string(i), dirs.back());
      apis.push_back(std::make_unique<http_api>(n));
      auto& api = *apis.back();
      regs.push_back(registry::open(n));
      c.run([&]() -> task<> { co_await open_all(n, api); });
    }
  }
  task<> open_all(node& n, http_api& api) {
    placement_options po;
    po.shards = 8;
    auto g = co_await placement::open(n, "jobs", po);
    groups.push_back(g);
    reminder_options ro;
    ro.tick = 20ms;
    auto r = co_await reminders::open(n, ro);
    timers.push_back(r);
    auto d = co_await members::open(n, tags_of(n.id()));
    directory.push_back(d);
    co_await api.expose(d);
    auto q = co_await queries::open(n);
    asked.push_back(q);
    co_await api.expose(q);
    co_await api.expose(regs.back());
    co_await api.expose(groups.back());
    co_await api.expose(timers.back());
    co_await api.start();
  }
  ~services_fixture() {
    c.run([&]() -> task<> {
      for (auto& a : apis) co_await a->stop();
    });
    c.stop_all();
    for (const auto& d : dirs) std::filesystem::remove_all(d);
  }
  reply call(std::size_t i, http::verb method, std::string target, std::string body = {}) {
    reply r;
    c.run([&]() -> task<> { r = co_await send_request(apis[i]->port(), method, target, body); });
    return r;
  }
};

}  // namespace

TEST_CASE("HTTP: register a service through one node, look it up through the other, deregister") {
  services_fixture f;
  auto put = f.call(0, http::verb::put, "/services/db/10.0.0.1%3A5432", R"({"zone":"a"})");
  CHECK(put.status == 200);
  REQUIRE(f.c.eventually([&] { return f.regs[1]->lookup("db").size() == 1; }));
  auto one = f.call(1, http::verb::get, "/services/db");
  REQUIRE(one.status == 200);
  const auto body = one.body_json();
  REQUIRE(body["providers"].size() == 1);
  CHECK(body["providers"][0]["node"] == "n0");
  CHECK(body["providers"][0]["endpoint"] == "10.0.0.1:5432");
  CHECK(body["providers"][0]["metadata"] == json{{"zone", "a"}});
  auto all = f.call(1, http::verb::get, "/services").body_json();
  CHECK(all["services"].size() >= 2);  // db, and the placement group's members
  CHECK(f.call(1, http::verb::get, "/services/none?find=1&timeout_ms=100").body_json()["providers"].empty());
  CHECK(f.call(0, http::verb::put, "/services/db/e", "[1]").status == 422);
  CHECK(f.call(0, http::verb::put, "/services/db/e", "{").status == 400);
  CHECK(f.call(0, http::verb::delete_, "/services/db/nope").status == 404);
  CHECK(f.call(0, http::verb::delete_, "/services/db/10.0.0.1%3A5432").status == 200);
  CHECK(f.c.eventually([&] { return f.regs[1]->lookup("db").empty(); }));
  CHECK(f.call(0, http::verb::post, "/services").status == 405);
}

TEST_CASE("HTTP: /shards shows each group's members, owners and this node's fences") {
  services_fixture f;
  REQUIRE(f.c.eventually([&] { return f.groups[0]->members().size() == 2 && f.groups[1]->members().size() == 2; }));
  const auto list = f.call(0, http::verb::get, "/shards").body_json();
  REQUIRE(list["groups"].is_array());
  bool has_jobs = false;
  for (const auto& g : list["groups"]) has_jobs |= g["group"] == "jobs";
  CHECK(has_jobs);
  const auto g = f.call(0, http::verb::get, "/shards/jobs").body_json();
  CHECK(g["shards"] == 8);
  CHECK(g["members"].size() == 2);
  REQUIRE(g["owners"].size() == 8);
  for (const auto& o : g["owned"]) {
    CHECK(g["owners"][o["shard"].get<std::size_t>()] == "n0");
    CHECK(o["fence"].get<std::uint64_t>() > 0);
  }
  CHECK(f.call(0, http::verb::get, "/shards/other").status == 404);
}

TEST_CASE("HTTP: schedule, read and cancel reminders; fired reminders stream over a WebSocket") {
  services_fixture f;
  CHECK(f.call(0, http::verb::put, "/reminders/later", R"({"in_ms": 3600000, "payload": {"x": 1}})").status == 200);
  REQUIRE(f.c.eventually([&] { return f.timers[1]->get("later").has_value(); }));
  const auto one = f.call(1, http::verb::get, "/reminders/later").body_json();
  CHECK(one["payload"] == json{{"x", 1}});
  CHECK(f.call(1, http::verb::get, "/reminders").body_json()["size"] == 1);
  CHECK(f.call(1, http::verb::delete_, "/reminders/later").status == 200);
  CHECK(f.call(1, http::verb::delete_, "/reminders/later").status == 404);
  CHECK(f.call(0, http::verb::put, "/reminders/bad", R"({"at": 1, "in_ms": 2})").status == 400);
  CHECK(f.call(0, http::verb::put, "/reminders/bad", R"({"at": -1})").status == 400);

  // Both nodes stream fired reminders; the owner of its shard fires it.
  std::vector<json> fired;
  f.c.run([&]() -> task<> {
    std::vector<std::unique_ptr<websocket::stream<beast::tcp_stream>>> streams;
    for (std::size_t i = 0; i < 2; ++i) {
      streams.push_back(std::make_unique<websocket::stream<beast::tcp_stream>>(co_await asio::this_coro::executor));
      auto& ws = *streams.back();
      co_await beast::get_lowest_layer(ws).async_connect(
          tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.apis[i]->port()), asio::use_awaitable);
      co_await ws.async_handshake("127.0.0.1", "/reminders/events", asio::use_awaitable);
    }
    co_await send_request(f.apis[0]->port(), http::verb::put, "/reminders/soon", R"({"in_ms": 50})");
    std::shared_ptr<placement> owners = co_await placement::open(*f.c.nodes[0], "barrel_p2p.reminders");
    const auto owner = owners->owner(owners->shard_of("soon"));
    auto& ws = *streams[owner == "n0" ? 0 : 1];
    beast::flat_buffer buffer;
    co_await ws.async_read(buffer, asio::use_awaitable);
    fired.push_back(json::parse(beast::buffers_to_string(buffer.data())));
    for (auto& s : streams) co_await s->async_close(websocket::close_code::normal, asio::use_awaitable);
  });
  REQUIRE(fired.size() == 1);
  CHECK(fired[0]["event"] == "fired");
  CHECK(fired[0]["name"] == "soon");
  CHECK(fired[0]["fence"].get<std::uint64_t>() > 0);
}

TEST_CASE("HTTP: routes of consumers a node does not serve are 404 with a JSON reason") {
  cluster<tcp_net> c;
  auto& n = c.add("solo");
  http_api api(n);
  c.run([&]() -> task<> { co_await api.start(); });
  reply r;
  c.run([&]() -> task<> { r = co_await send_request(api.port(), http::verb::get, "/reminders"); });
  CHECK(r.status == 404);
  CHECK(r.body_json()["error"] == "not_served");
  c.run([&]() -> task<> { r = co_await send_request(api.port(), http::verb::get, "/services"); });
  CHECK(r.status == 404);
  c.run([&]() -> task<> { r = co_await send_request(api.port(), http::verb::post, "/query/x"); });
  CHECK(r.status == 404);
  CHECK(r.body_json()["error"] == "not_served");
  c.run([&]() -> task<> { co_await api.stop(); });
}

TEST_CASE("HTTP: POST /query asks every node and answers when the query ends; bad queries are 400") {
  services_fixture f;
  REQUIRE(f.c.eventually([&] { return f.directory[0]->list().size() == 2 && f.directory[1]->list().size() == 2; }));
  const auto all = f.call(0, http::verb::post, "/query/barrel_p2p.status", R"({"timeout_ms": 1500})");
  REQUIRE(all.status == 200);
  const auto body = all.body_json();
  CHECK(body["query"] == "barrel_p2p.status");
  std::set<std::string> answered;
  for (const auto& a : body["answers"]) {
    answered.insert(a["node"].get<std::string>());
    CHECK(a["payload"]["node"] == a["node"]);  // each node answers with its own GET /status
    CHECK(a["ms"].is_number_unsigned());
  }
  CHECK(answered == std::set<std::string>{"n0", "n1"});
  const auto db = f.call(1, http::verb::post, "/query/barrel_p2p.status", R"({"timeout_ms": 1000, "tags": {"role": "db"}})");
  REQUIRE(db.status == 200);
  REQUIRE(db.body_json()["answers"].size() == 1);
  CHECK(db.body_json()["answers"][0]["node"] == "n0");
  const auto one = f.call(1, http::verb::post, "/query/barrel_p2p.status", R"({"timeout_ms": 60000, "max_answers": 1})");
  CHECK(one.body_json()["answers"].size() == 1);  // answered at the first, not after a minute
  const auto nobody = f.call(0, http::verb::post, "/query/nobody.answers", R"({"timeout_ms": 200})");
  CHECK(nobody.status == 200);
  CHECK(nobody.body_json()["answers"].empty());

  CHECK(f.call(0, http::verb::post, "/query/x", R"({"timeout_ms": 0})").body_json()["error"] == "bad_query");
  CHECK(f.call(0, http::verb::post, "/query/x", R"({"tags": {"k": 1}})").status == 400);
  CHECK(f.call(0, http::verb::post, "/query/x", R"({"nodes": "n1"})").status == 400);
  CHECK(f.call(0, http::verb::post, "/query/x", "[1]").body_json()["error"] == "bad_query");
  CHECK(f.call(0, http::verb::post, "/query/x", "{").body_json()["error"] == "bad_json");
  CHECK(f.call(0, http::verb::post, "/query/" + std::string(201, 'n')).body_json()["error"] == "bad_query");
  CHECK(f.call(0, http::verb::get, "/query/x").status == 405);
  CHECK(f.call(0, http::verb::post, "/query").status == 404);
  CHECK(f.call(0, http::verb::post, "/query/a/b").status == 404);
}

TEST_CASE("HTTP: GET /ui serves the cluster page, without the token the API needs") {
  cluster<tcp_net> c;
  auto& n = c.add("solo");
  http_api_config config;
  config.bearer_token = "secret-token";
  http_api api(n, config);
  c.run([&]() -> task<> { co_await api.start(); });
  reply page, with_query, post, status;
  c.run([&]() -> task<> {
    page = co_await send_request(api.port(), http::verb::get, "/ui");
    with_query = co_await send_request(api.port(), http::verb::get, "/ui?refresh=1");
    post = co_await send_request(api.port(), http::verb::post, "/ui");
    status = co_await send_request(api.port(), http::verb::get, "/status");
  });
  CHECK(page.status == 200);
  CHECK(page.content_type.starts_with("text/html"));
  CHECK(page.body.find("<title>barrel_p2p cluster</title>") != std::string::npos);
  for (const char* external : {"src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import"})
    CHECK(page.body.find(external) == std::string::npos);  // nothing loaded from elsewhere
  CHECK(with_query.status == 200);
  CHECK(post.status == 405);
  CHECK(status.status == 401);  // the data still needs the token
  c.run([&]() -> task<> { co_await api.stop(); });
}

TEST_CASE("HTTP: /members lists the directory with tag filters; /members/events streams changes") {
  services_fixture f;
  REQUIRE(f.c.eventually([&] { return f.directory[0]->list().size() == 2 && f.directory[1]->list().size() == 2; }));
  const auto all = f.call(1, http::verb::get, "/members").body_json();
  REQUIRE(all["members"].size() == 2);
  CHECK(all["members"][0]["id"] == "n0");
  CHECK(all["members"][0]["address"] == f.c.nodes[0]->self().address.to_string());
  CHECK(all["members"][0]["tags"] == json{{"role", "db"}, {"zone", "a"}});
  const auto db = f.call(1, http::verb::get, "/members?tag=role%3Adb&tag=zone:a").body_json();
  REQUIRE(db["members"].size() == 1);
  CHECK(db["members"][0]["id"] == "n0");
  CHECK(f.call(1, http::verb::get, "/members?tag=role:none").body_json()["members"].empty());
  CHECK(f.call(1, http::verb::get, "/members?tag=nocolon").status == 400);
  CHECK(f.call(1, http::verb::get, "/members/n1").body_json()["tags"]["role"] == "web");
  CHECK(f.call(1, http::verb::get, "/members/ghost").status == 404);

  json update;
  f.c.run([&]() -> task<> {
    websocket::stream<beast::tcp_stream> ws(co_await asio::this_coro::executor);
    co_await beast::get_lowest_layer(ws).async_connect(
        tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.apis[0]->port()), asio::use_awaitable);
    co_await ws.async_handshake("127.0.0.1", "/members/events", asio::use_awaitable);
    auto t = tags_of("n1");
    t["version"] = "2";
    co_await f.directory[1]->set_tags(t);
    beast::flat_buffer buffer;
    co_await ws.async_read(buffer, asio::use_awaitable);
    update = json::parse(beast::buffers_to_string(buffer.data()));
    co_await ws.async_close(websocket::close_code::normal, asio::use_awaitable);
  });
  CHECK(update["event"] == "updated");
  CHECK(update["id"] == "n1");
  CHECK(update["tags"]["version"] == "2");
}

TEST_CASE("HTTP: /metrics covers the registry, placement groups, reminders and the member directory") {
  services_fixture f;
  REQUIRE(f.c.eventually([&] { return f.directory[0]->list().size() == 2; }));
  const auto text = f.call(0, http::verb::get, "/metrics").body;
  for (const char* family : {"barrel_p2p_registry_providers", "barrel_p2p_registry_probes_total", "barrel_p2p_members",
                             "barrel_p2p_reminders_fired_total", "barrel_p2p_placement_owned_shards"})
    CHECK_MESSAGE(text.find(std::string("# TYPE ") + family + " ") != std::string::npos, family);
  CHECK(text.find("barrel_p2p_members{node=\"n0\"} 2") != std::string::npos);
  CHECK(text.find("barrel_p2p_placement_members{node=\"n0\",group=\"jobs\"} 2") != std::string::npos);
}
