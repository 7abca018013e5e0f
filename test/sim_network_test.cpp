#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

struct recorder {
  std::vector<std::string> log;
  void attach(transport& t) {
    auto id = t.self().id;
    t.on_message(channel::membership, [this, id](const std::string& from, const byte_slice& body) {
      auto m = decode_cbor(body.bytes());
      log.push_back(id + "<-" + from + ":" + (m ? m->dump() : "?"));
      return m.has_value();
    });
    t.on_connected([this, id](const peer_descriptor& p, bool inbound) {
      log.push_back(id + " up " + p.id + (inbound ? " in" : " out"));
    });
    t.on_disconnected([this, id](const std::string& p, disconnect_reason r) {
      log.push_back(id + " down " + p + " " + std::string(to_string(r)));
    });
  }
};

// Runs a small scripted exchange and returns everything that happened.
std::vector<std::string> scripted_run(std::uint64_t seed) {
  boost::asio::io_context io;
  sim_config cfg;
  cfg.seed = seed;
  cfg.jitter = 4ms;
  cfg.loss = 0.2;
  cfg.duplicate = 0.2;
  sim_network net(io, cfg);
  recorder rec;
  std::vector<std::unique_ptr<transport>> nodes;
  for (int i = 0; i < 4; ++i) {
    nodes.push_back(net.add_node("n" + std::to_string(i)));
    rec.attach(*nodes.back());
  }
  boost::asio::co_spawn(io, [&]() -> task<> {
    for (int i = 1; i < 4; ++i) {
      peer_address addr{"sim", static_cast<std::uint16_t>(i)};
      co_await nodes[0]->connect(addr);
    }
    for (int k = 0; k < 50; ++k)
      for (int i = 1; i < 4; ++i)
        nodes[0]->send("n" + std::to_string(i), channel::membership, encode_body(k));
  }, boost::asio::detached);
  net.run_for(10s);
  return rec.log;
}

}  // namespace

TEST_CASE("same seed, same sequence of events; another seed, another sequence") {
  auto a = scripted_run(7);
  auto b = scripted_run(7);
  auto c = scripted_run(8);
  CHECK(a.size() > 50);
  CHECK(a == b);
  CHECK(a != c);
}

TEST_CASE("messages arrive after the configured latency on virtual time") {
  boost::asio::io_context io;
  sim_config cfg;
  cfg.latency = 40ms;
  cfg.jitter = 0ms;
  sim_network net(io, cfg);
  auto a = net.add_node("a");
  auto b = net.add_node("b");
  duration arrived{-1};
  b->on_message(channel::replica, [&](const std::string& from, const byte_slice& body) {
    CHECK(from == "a");
    CHECK(decode_cbor(body.bytes()) == json{{"hello", 1}});
    arrived = net.now();
    return true;
  });
  duration sent{};
  boost::asio::co_spawn(io, [&]() -> task<> {
    auto peer = co_await a->connect({"sim", 1});
    REQUIRE(peer.has_value());
    CHECK(peer->id == "b");
    sent = net.now();
    CHECK(a->send("b", channel::replica, encode_body({{"hello", 1}})));
  }, boost::asio::detached);
  net.run_for(1s);
  CHECK(arrived - sent == 40ms);
  CHECK(net.now() == 1000ms);
}

TEST_CASE("a killed node's peers see the connection fail after the detection delay") {
  boost::asio::io_context io;
  sim_config cfg;
  cfg.failure_detection = 2s;
  sim_network net(io, cfg);
  auto a = net.add_node("a");
  auto b = net.add_node("b");
  std::optional<duration> down_at;
  disconnect_reason why{};
  a->on_disconnected([&](const std::string& p, disconnect_reason r) {
    CHECK(p == "b");
    down_at = net.now();
    why = r;
  });
  boost::asio::co_spawn(io, [&]() -> task<> { co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(100ms);
  REQUIRE(a->is_connected("b"));
  net.kill("b");
  CHECK_FALSE(a->send("zzz", channel::replica, encode_body(1)));  // unknown peer
  CHECK(a->send("b", channel::replica, encode_body(1)));          // looks fine, is lost
  net.run_for(5s);
  REQUIRE(down_at.has_value());
  CHECK(*down_at == 2100ms);
  CHECK(why == disconnect_reason::heartbeat_timeout);
  CHECK_FALSE(a->is_connected("b"));
  // Dialling the dead node fails; after revive it succeeds.
  std::optional<std::optional<peer_descriptor>> r1, r2;
  boost::asio::co_spawn(io, [&]() -> task<> { r1 = co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(5s);
  REQUIRE(r1.has_value());
  CHECK_FALSE(r1->has_value());
  net.revive("b");
  boost::asio::co_spawn(io, [&]() -> task<> { r2 = co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(5s);
  REQUIRE(r2.has_value());
  CHECK(r2->has_value());
}

TEST_CASE("a partition drops traffic and fails crossing links; one-way too") {
  boost::asio::io_context io;
  sim_network net(io, {});
  auto a = net.add_node("a");
  auto b = net.add_node("b");
  int received_by_b = 0, received_by_a = 0;
  b->on_message(channel::replica, [&](const std::string&, const byte_slice&) { return ++received_by_b > 0; });
  a->on_message(channel::replica, [&](const std::string&, const byte_slice&) { return ++received_by_a > 0; });
  boost::asio::co_spawn(io, [&]() -> task<> { co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(100ms);
  net.partition({"a"}, {"b"}, /*one_way=*/true);
  a->send("b", channel::replica, encode_body(1));
  b->send("a", channel::replica, encode_body(1));
  net.run_for(100ms);
  CHECK(received_by_b == 0);
  CHECK(received_by_a == 1);
  net.run_for(10s);
  CHECK_FALSE(a->is_connected("b"));
  CHECK_FALSE(b->is_connected("a"));
  net.heal();
  std::optional<peer_descriptor> again;
  boost::asio::co_spawn(io, [&]() -> task<> { again = co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(1s);
  CHECK(again.has_value());
}

TEST_CASE("disconnect: closed_locally here, closed_by_peer there") {
  boost::asio::io_context io;
  sim_network net(io, {});
  auto a = net.add_node("a");
  auto b = net.add_node("b");
  std::vector<std::string> seen;
  a->on_disconnected([&](const std::string& p, disconnect_reason r) { seen.push_back("a:" + p + ":" + std::string(to_string(r))); });
  b->on_disconnected([&](const std::string& p, disconnect_reason r) { seen.push_back("b:" + p + ":" + std::string(to_string(r))); });
  boost::asio::co_spawn(io, [&]() -> task<> { co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(100ms);
  a->disconnect("b");
  net.run_for(100ms);
  CHECK(seen == std::vector<std::string>{"a:b:closed_locally", "b:a:closed_by_peer"});
}

TEST_CASE("ten virtual minutes of timers pass quickly") {
  boost::asio::io_context io;
  sim_network net(io, {});
  auto sched = net.make_scheduler();
  int ticks = 0;
  boost::asio::co_spawn(io, [&]() -> task<> {
    while (co_await sched->sleep(100ms)) ++ticks;
  }, boost::asio::detached);
  net.run_for(std::chrono::minutes(10));
  CHECK(ticks == 6000);
  CHECK(sched->wall_ms() == net.config().epoch_ms + 600'000);
}

namespace {

// Three regions: a-b 80 ms apart, a-c 200 ms, b-c 150 ms, 2 ms within each.
sim_regions three_regions(double jitter_share = 0) {
  sim_regions r;
  r.names = {"east", "west", "far"};
  r.rtt = {{2ms, 80ms, 200ms}, {80ms, 2ms, 150ms}, {200ms, 150ms, 2ms}};
  r.jitter_share = jitter_share;
  return r;
}

// When each message from `from` reaches `to`, after the link is up.
struct timed_link {
  std::vector<duration> arrivals;
  duration connected_at{-1};
  void watch(sim_network& net, transport& to) {
    to.on_message(channel::replica, [this, &net](const std::string&, const byte_slice&) {
      arrivals.push_back(net.now());
      return true;
    });
  }
};

}  // namespace

TEST_CASE("regions: a link's delay is half its regions' round trip, the handshake a whole one") {
  boost::asio::io_context io;
  sim_network net(io, {});
  std::vector<std::unique_ptr<transport>> t;
  for (const char* id : {"a1", "a2", "b", "c"}) t.push_back(net.add_node(id));
  net.set_regions(three_regions());
  net.set_region("b", 1);
  net.set_region("c", 2);
  CHECK(net.region_of("a1") == 0);
  CHECK(net.region_of("c") == 2);
  CHECK(net.base_delay("a1", "a2") == 1ms);
  CHECK(net.base_delay("a1", "c") == 100ms);
  CHECK(net.base_delay("c", "b") == 75ms);
  timed_link to_a2, to_b, to_c;
  to_a2.watch(net, *t[1]);
  to_b.watch(net, *t[2]);
  to_c.watch(net, *t[3]);
  std::vector<duration> handshakes;
  boost::asio::co_spawn(io, [&]() -> task<> {
    for (std::uint16_t port : {1, 2, 3}) {
      const auto start = net.now();
      auto peer = co_await t[0]->connect({"sim", port});
      REQUIRE(peer.has_value());
      handshakes.push_back(net.now() - start);
      t[0]->send(peer->id, channel::replica, encode_body(1));
    }
  }, boost::asio::detached);
  net.run_for(2s);
  // Dials one after the other: 2 ms, then 80 ms, then 200 ms of handshake.
  CHECK(handshakes == std::vector<duration>{2ms, 80ms, 200ms});
  CHECK(to_a2.arrivals == std::vector<duration>{3ms});
  CHECK(to_b.arrivals == std::vector<duration>{82ms + 40ms});
  CHECK(to_c.arrivals == std::vector<duration>{282ms + 100ms});
}

TEST_CASE("regions: loss between regions only, jitter within the share, bad matrices refused") {
  boost::asio::io_context io;
  sim_network net(io, {});
  auto a = net.add_node("a"), a2 = net.add_node("a2"), b = net.add_node("b");
  auto r = three_regions(0.1);
  r.loss_between = 0.5;
  net.set_regions(r);
  net.set_region("b", 1);
  timed_link to_a2, to_b;
  to_a2.watch(net, *a2);
  to_b.watch(net, *b);
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await a->connect({"sim", 1});
    co_await a->connect({"sim", 2});
  }, boost::asio::detached);
  net.run_for(1s);
  REQUIRE(a->is_connected("b"));
  const auto sent = net.now();
  for (int k = 0; k < 400; ++k) a->send("a2", channel::replica, encode_body(k)), a->send("b", channel::replica, encode_body(k));
  net.run_for(1s);
  CHECK(to_a2.arrivals.size() == 400);                              // within a region: no loss
  CHECK(to_b.arrivals.size() > 150);                                // between: about half
  CHECK(to_b.arrivals.size() < 250);
  for (auto at : to_b.arrivals) CHECK((at - sent >= 36ms && at - sent <= 44ms));  // 40 ms ± 10 %
  CHECK(std::adjacent_find(to_b.arrivals.begin(), to_b.arrivals.end(), std::not_equal_to<>()) != to_b.arrivals.end());
  auto asymmetric = three_regions();
  asymmetric.rtt[0][1] = 90ms;
  CHECK_THROWS_AS(net.set_regions(asymmetric), std::invalid_argument);
  auto short_row = three_regions();
  short_row.rtt[2].pop_back();
  CHECK_THROWS_AS(net.set_regions(short_row), std::invalid_argument);
  auto negative = three_regions();
  negative.rtt[1][1] = -1ms;
  CHECK_THROWS_AS(net.set_regions(negative), std::invalid_argument);
  auto wide = three_regions(1.5);
  CHECK_THROWS_AS(net.set_regions(wide), std::invalid_argument);
  auto lossy = three_regions();
  lossy.loss_within = 2;
  CHECK_THROWS_AS(net.set_regions(lossy), std::invalid_argument);
  CHECK_THROWS_AS(net.set_region("a", 3), std::invalid_argument);
}

TEST_CASE("regions: loss within a region, and odd round trips rounded up") {
  boost::asio::io_context io;
  sim_network net(io, {});
  auto a = net.add_node("a"), a2 = net.add_node("a2");
  auto r = three_regions();
  r.rtt[0][0] = 5ms;
  r.loss_within = 1.0;
  net.set_regions(r);
  CHECK(net.base_delay("a", "a2") == 3ms);
  timed_link to_a2;
  to_a2.watch(net, *a2);
  boost::asio::co_spawn(io, [&]() -> task<> { co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(1s);
  REQUIRE(a->is_connected("a2"));
  for (int k = 0; k < 20; ++k) a->send("a2", channel::replica, encode_body(k));
  net.run_for(1s);
  CHECK(to_a2.arrivals.empty());
}

TEST_CASE("a flapping link holds messages through a short outage and closes after a long one") {
  boost::asio::io_context io;
  sim_config cfg;
  cfg.latency = 10ms;
  cfg.jitter = 0ms;
  cfg.failure_detection = 2s;
  sim_network net(io, cfg);
  auto a = net.add_node("a"), b = net.add_node("b");
  timed_link to_b;
  to_b.watch(net, *b);
  std::optional<duration> down_at;
  b->on_disconnected([&](const std::string&, disconnect_reason r) {
    CHECK(r == disconnect_reason::heartbeat_timeout);
    down_at = net.now();
  });
  boost::asio::co_spawn(io, [&]() -> task<> { co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(100ms);
  net.flap("a", "b", 500ms);  // shorter than failure detection: held, not lost
  a->send("b", channel::replica, encode_body(1));
  net.run_for(300ms);
  a->send("b", channel::replica, encode_body(2));
  net.run_for(1s);
  CHECK(to_b.arrivals == std::vector<duration>{610ms, 610ms});
  CHECK(a->is_connected("b"));
  a->send("b", channel::replica, encode_body(3));  // after the outage: the usual delay
  net.run_for(100ms);
  CHECK(to_b.arrivals.back() == 1410ms);
  CHECK(net.stats().messages_held == 2);
  net.flap("b", "a", 5s);  // longer: both sides close it, as heartbeats would
  a->send("b", channel::replica, encode_body(4));
  net.run_for(2500ms);
  CHECK(down_at == 1500ms + 2s);
  CHECK_FALSE(a->is_connected("b"));
  // While the outage lasts, a new connection fails as across a partition.
  std::optional<std::optional<peer_descriptor>> redial;
  boost::asio::co_spawn(io, [&]() -> task<> { redial = co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(1500ms);
  REQUIRE(redial.has_value());
  CHECK_FALSE(redial->has_value());
  net.run_for(10s);  // the outage is over: a dial succeeds
  redial.reset();
  boost::asio::co_spawn(io, [&]() -> task<> { redial = co_await a->connect({"sim", 1}); }, boost::asio::detached);
  net.run_for(1s);
  REQUIRE(redial.has_value());
  CHECK(redial->has_value());
  CHECK(to_b.arrivals.size() == 3);  // message 4 went with the old link
  CHECK(net.stats().links_flapped == 2);
}

TEST_CASE("set_flapping flaps random links at the given rate until it is set to 0") {
  boost::asio::io_context io;
  sim_network net(io, {});
  std::vector<std::unique_ptr<transport>> t;
  for (int i = 0; i < 6; ++i) t.push_back(net.add_node("n" + std::to_string(i)));
  boost::asio::co_spawn(io, [&]() -> task<> {
    for (std::uint16_t i = 1; i < 6; ++i) co_await t[0]->connect({"sim", i});
  }, boost::asio::detached);
  net.run_for(1s);
  net.set_flapping(5, 100ms);
  net.run_for(10s);
  CHECK(net.stats().links_flapped == 50);
  net.set_flapping(0, 100ms);
  net.run_for(10s);
  CHECK(net.stats().links_flapped == 50);
  for (int i = 1; i < 6; ++i) CHECK(t[0]->is_connected("n" + std::to_string(i)));  // short outages close nothing
  // Only links to live peers flap: with every peer of n0 dead, nothing does.
  for (int i = 1; i < 6; ++i) net.kill("n" + std::to_string(i));
  const auto before = net.stats().links_flapped;
  net.set_flapping(5, 100ms);
  net.run_for(10s);
  CHECK(net.stats().links_flapped == before);
}
