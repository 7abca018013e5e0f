// The replica driver over real TCP: several full nodes in one process.
#include <barrel_p2p/crdt_wire.hpp>
#include <barrel_p2p/node.hpp>
#include <barrel_p2p/replica.hpp>
#include <barrel_p2p/replica_messages.hpp>
#include <barrel_p2p/detail/plumtree_messages.hpp>
#include <barrel_p2p/tcp_transport.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

#include "forwarding_transport.hpp"

#include <set>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

// Drops data traffic to and from blocked peers while leaving the TCP
// connections (and their heartbeats) up: a partition in which every link
// survives, so healing cannot rely on peer_up.
class blocking_transport final : public testing::forwarding_transport {
 public:
  using forwarding_transport::forwarding_transport;
  std::set<std::string> blocked;

  void on_message(channel ch, message_handler h) override {
    if (!h) return forwarding_transport::on_message(ch, nullptr);
    forwarding_transport::on_message(ch, [this, h = std::move(h)](const std::string& from, const byte_slice& body) {
      return blocked.contains(from) || h(from, body);
    });
  }
  bool send(const std::string& peer, channel ch, const message_body& body) override {
    if (blocked.contains(peer)) return true;  // lost in the partition
    return forwarding_transport::send(peer, ch, body);
  }
};

// The owner: one OR-Map per instance name, fed through crdt_wire::ingest.
struct map_owner final : replica_callbacks {
  explicit map_owner(hlc_clock& c, bool ae) : clock(c), ae(ae) {}
  hlc_clock& clock;
  bool ae;
  std::map<std::string, ormap> maps;
  std::size_t rejected = 0;
  std::vector<json> customs;
  std::size_t snapshots_applied = 0;

  task<> merge_delta(const std::string& name, const json& delta) override {
    rejected += crdt_wire::ingest(maps[name], delta, clock).why.total;
    co_return;
  }
  task<> apply_full_sync(const std::string& name, const json& snapshot) override {
    ++snapshots_applied;
    rejected += crdt_wire::ingest(maps[name], snapshot, clock).why.total;
    co_return;
  }
  task<std::optional<json>> full_sync_snapshot(const std::string& name) override {
    auto it = maps.find(name);
    if (it == maps.end() || it->second.entry_count() == 0) co_return std::nullopt;
    co_return crdt_wire::encode_map(it->second);
  }
  task<> remove_node(const std::string&, const std::string&) override { co_return; }
  task<> merge_custom(const std::string& name, const json& payload) override {
    customs.push_back({{"name", name}, {"p", payload}});
    co_return;
  }
  bool anti_entropy() const override { return ae; }
};

// A full node (barrel_p2p::node) over a blocking_transport, with the
// test's own replica owner: the layers are the node's, reached by pointer.
struct test_node {
  std::unique_ptr<node> core;
  blocking_transport* net = nullptr;
  scheduler* sched = nullptr;
  hyparview* membership = nullptr;
  plumtree* broadcast = nullptr;
  replica_host* replicas = nullptr;
  std::unique_ptr<map_owner> owner;
  std::map<std::string, std::shared_ptr<replica>> instances;
  std::string id() const { return net->self().id; }
};

struct cluster {
  boost::asio::io_context io;
  std::vector<std::unique_ptr<test_node>> nodes;
  std::vector<std::string> errors;

  std::size_t passive_size = 30;

  test_node& add(const std::string& id, bool anti_entropy = true) {
    auto n = std::make_unique<test_node>();
    node_config c;
    c.transport.node_id = id;
    c.transport.listen_host = "127.0.0.1";
    c.transport.cluster_secret = "replica-test-cluster-secret";
    c.transport.heartbeat_interval = 200ms;
    c.transport.heartbeat_timeout = 2s;
    c.membership.maintenance_interval = 100ms;
    c.membership.shuffle_interval = 1s;
    c.membership.random_promotion = 0;
    c.membership.passive_size = passive_size;
    c.replicas.anti_entropy_interval = 300ms;
    c.replicas.log = [this](const std::string& line) { errors.push_back(line); };
    c.log = [](const std::string&) {};
    auto wrap = [&n](std::unique_ptr<transport> tcp) -> std::unique_ptr<transport> {
      auto blocking = std::make_unique<blocking_transport>(std::move(tcp));
      n->net = blocking.get();
      return blocking;
    };
    n->core = std::make_unique<node>(node_network::tcp(io.get_executor(), wrap), c);
    n->sched = &n->core->sched();
    n->membership = &n->core->membership();
    n->broadcast = &n->core->broadcast();
    n->replicas = &n->core->replicas();
    n->owner = std::make_unique<map_owner>(n->core->clock(), anti_entropy);
    nodes.push_back(std::move(n));
    return *nodes.back();
  }

  void run(std::function<task<>()> body, duration limit = 60s) {
    bool done = false;
    boost::asio::co_spawn(io, [&]() -> task<> {
      co_await body();
      done = true;
    }, [&](std::exception_ptr e) {
      if (e) {
        try { std::rethrow_exception(e); } catch (const std::exception& ex) { FAIL("coroutine threw: " << ex.what()); }
      }
    });
    auto sched = make_real_scheduler(io.get_executor());
    const auto end = sched->now() + limit;
    while (!done && sched->now() < end) io.run_for(50ms);
    io.restart();
    CHECK(done);
  }

  // Polls `cond` every 20 ms; the limit only catches hangs.
  bool eventually(const std::function<bool()>& cond, duration limit = 30s) {
    bool ok = false;
    run([&]() -> task<> {
      auto sched = make_real_scheduler(io.get_executor());
      const auto end = sched->now() + limit;
      while (!(ok = cond()) && sched->now() < end) co_await sched->sleep(20ms);
    }, limit + 5s);
    return ok;
  }

  void start(std::size_t count, const std::vector<std::string>& instance_names) {
    for (std::size_t i = 0; i < count; ++i) add("n" + std::to_string(i));
    run([&]() -> task<> {
      for (auto& n : nodes) {
        co_await n->core->start();  // no contacts: each joins below
        for (const auto& name : instance_names) n->instances[name] = replica::start(*n->replicas, name, *n->owner);
      }
      const auto contact = nodes[0]->net->self().address;
      for (std::size_t i = 1; i < nodes.size(); ++i) co_await nodes[i]->membership->join(contact);
    });
    REQUIRE(eventually([&] {
      for (auto& n : nodes)
        if (n->membership->active_view().empty()) return false;
      return true;
    }));
  }

  bool converged(const std::string& name) {
    for (auto& n : nodes)
      if (n->owner->maps[name] != nodes[0]->owner->maps[name]) return false;
    return true;
  }

  // Updates are named before the co_await: GCC 12 mishandles braced
  // aggregate temporaries passed to coroutines.
  void put(test_node& n, const std::string& name, const std::string& key, json value) {
    replica_update u = replica_add{key, std::move(value)};
    run([&]() -> task<> { co_await n.instances.at(name)->broadcast_update(std::move(u)); });
  }
  void remove(test_node& n, const std::string& name, const std::string& key) {
    replica_update u = replica_remove{key};
    run([&]() -> task<> { co_await n.instances.at(name)->broadcast_update(std::move(u)); });
  }

  ~cluster() {
    run([&]() -> task<> {
      for (auto& n : nodes) co_await n->core->stop();
    });
  }
};

}  // namespace

TEST_CASE("5 nodes: adds and removes from different nodes converge everywhere") {
  cluster c;
  c.start(5, {"t"});
  for (int i = 0; i < 20; ++i) c.put(*c.nodes[i % 5], "t", "k" + std::to_string(i % 7), json{{"i", i}});
  c.remove(*c.nodes[3], "t", "k2");
  c.remove(*c.nodes[1], "t", "k5");
  c.put(*c.nodes[4], "t", "k5", "back");  // a later add wins over the earlier remove
  REQUIRE(c.eventually([&] { return c.converged("t") && c.nodes[0]->owner->maps["t"].keys().size() == 6; }));
  auto& m = c.nodes[2]->owner->maps["t"];
  CHECK_FALSE(m.get("k2").has_value());
  CHECK(m.get("k5") == json("back"));
  CHECK(m.get("k6") == json{{"i", 13}});
  CHECK(m.get("k0") == json{{"i", 14}});
}

TEST_CASE("a remove is never undone by a delayed add with an older HLC") {
  cluster c;
  c.start(5, {"t"});
  c.put(*c.nodes[0], "t", "k", "v1");
  REQUIRE(c.eventually([&] { return c.converged("t") && c.nodes[4]->owner->maps["t"].get("k"); }));
  c.remove(*c.nodes[1], "t", "k");
  REQUIRE(c.eventually([&] { return c.converged("t") && !c.nodes[4]->owner->maps["t"].get("k"); }));
  // A delayed add whose HLC is older than the tombstone arrives late.
  const auto tomb = entry_hlc(*c.nodes[4]->owner->maps["t"].get_entry("k"));
  const hlc_timestamp stale_hlc{tomb.wall_ms - 1, 0};
  ormap scratch;
  auto stale = crdt_wire::encode_map(scratch.add("k", "stale", "n2", stale_hlc));
  c.nodes[2]->broadcast->broadcast("t", encode_delta_payload(stale));
  c.run([&]() -> task<> { co_await c.nodes[2]->sched->sleep(1s); });
  for (auto& n : c.nodes) {
    CAPTURE(n->id());
    CHECK_FALSE(n->owner->maps["t"].get("k").has_value());
  }
}

TEST_CASE("instances with different names never see each other's deltas") {
  cluster c;
  c.start(3, {"t", "u"});
  c.put(*c.nodes[0], "t", "only-t", 1);
  c.put(*c.nodes[1], "u", "only-u", 2);
  REQUIRE(c.eventually([&] {
    return c.converged("t") && c.converged("u") && c.nodes[2]->owner->maps["t"].get("only-t") &&
           c.nodes[2]->owner->maps["u"].get("only-u");
  }));
  for (auto& n : c.nodes) {
    CHECK(n->owner->maps["t"].keys() == std::vector<std::string>{"only-t"});
    CHECK(n->owner->maps["u"].keys() == std::vector<std::string>{"only-u"});
  }
  // And a second instance with a taken name is refused.
  CHECK_THROWS_AS(replica::start(*c.nodes[0]->replicas, "t", *c.nodes[0]->owner), std::invalid_argument);
}

TEST_CASE("an instance started after the cluster formed pulls the existing state") {
  cluster c;
  c.start(4, {"t"});
  for (int i = 0; i < 10; ++i) c.put(*c.nodes[i % 3], "t", "k" + std::to_string(i), i);
  REQUIRE(c.eventually([&] { return c.nodes[2]->owner->maps["t"].keys().size() == 10; }));
  // Node 3 stops its instance, forgets everything, and starts again late.
  c.run([&]() -> task<> { co_await c.nodes[3]->instances["t"]->stop(); });
  c.nodes[3]->instances.erase("t");
  c.nodes[3]->owner->maps.erase("t");
  c.nodes[3]->owner->ae = false;  // prove it is the start-up pull, not anti-entropy
  c.nodes[3]->instances["t"] = replica::start(*c.nodes[3]->replicas, "t", *c.nodes[3]->owner);
  CHECK(c.eventually([&] { return c.nodes[3]->owner->maps["t"].keys().size() == 10; }));
  CHECK(c.nodes[3]->instances["t"]->counters().pulls_sent > 0);
}

TEST_CASE("partition then heal: writes on both sides converge through anti-entropy alone") {
  cluster c;
  c.passive_size = 0;  // no repairs: the links formed at start are the only ones
  c.start(5, {"t"});
  std::uint64_t peer_ups_before = 0;
  for (auto& n : c.nodes) peer_ups_before += n->membership->counters().peers_up;
  std::set<std::string> left{"n0", "n1"}, right{"n2", "n3", "n4"};
  for (auto& n : c.nodes) n->net->blocked = left.contains(n->id()) ? right : left;
  c.put(*c.nodes[0], "t", "left", 1);
  c.put(*c.nodes[3], "t", "right", 2);
  c.put(*c.nodes[1], "t", "both", "from-left");
  c.put(*c.nodes[4], "t", "both", "from-right");  // later: wins after the heal
  c.run([&]() -> task<> { co_await c.nodes[0]->sched->sleep(1500ms); });
  CHECK_FALSE(c.nodes[0]->owner->maps["t"].get("right").has_value());
  CHECK_FALSE(c.nodes[4]->owner->maps["t"].get("left").has_value());
  for (auto& n : c.nodes) n->net->blocked.clear();
  REQUIRE(c.eventually([&] {
    return c.converged("t") && c.nodes[0]->owner->maps["t"].keys().size() == 3;
  }));
  CHECK(c.nodes[2]->owner->maps["t"].get("both") == json("from-right"));
  std::uint64_t rounds = 0, peer_ups_after = 0;
  for (auto& n : c.nodes) {
    rounds += n->instances["t"]->counters().anti_entropy_rounds;
    peer_ups_after += n->membership->counters().peers_up;
  }
  CHECK(rounds > 0);
  CHECK(peer_ups_after == peer_ups_before);  // no link came back up: it was anti-entropy
}

TEST_CASE("broadcast_custom reaches merge_custom on every node") {
  cluster c;
  c.start(4, {"t"});
  // (json built outside the coroutine: GCC 12 cannot compile an
  // initializer list inside one.)
  const json fence = {{"fence", 42}};
  c.run([&]() -> task<> { co_await c.nodes[1]->instances["t"]->broadcast_custom(fence); });
  CHECK(c.eventually([&] {
    for (auto& n : c.nodes)
      if (n->owner->customs.size() != 1) return false;
    return true;
  }));
  for (auto& n : c.nodes) CHECK(n->owner->customs.at(0) == json{{"name", "t"}, {"p", {{"fence", 42}}}});
}

TEST_CASE("malformed deltas and snapshots are ignored and counted; the node keeps converging") {
  cluster c;
  c.start(3, {"t"});
  // An authenticated but broken peer: knows the secret, sends garbage.
  auto sched = make_real_scheduler(c.io.get_executor());
  tcp_transport_config tc;
  tc.node_id = "broken";
  tc.cluster_secret = "replica-test-cluster-secret";
  tc.log = [](const std::string&) {};
  auto broken = make_tcp_transport(tc, *sched);
  auto target = c.nodes[0]->net->self().address;
  const std::vector<json> replica_junk = {
      {{"t", "sync"}, {"n", "t"}, {"s", "garbage"}},
      {{"t", "sync"}, {"n", "t"}, {"s", {{"k", {{"v", 1}}}}}},          // no dots
      {{"t", "sync"}, {"n", "t"}, {"s", {{"k", {{"t", json::array({1})}}}}}},  // bad hlc
      {{"t", "wat"}, {"n", "t"}},
      json::array({1, 2, 3}),
      {{"t", "sync"}, {"n", 7}},
  };
  // Two well-formed GOSSIPs with payloads the replica refuses, then a
  // GOSSIP without its payload and an IHAVE with half an id.
  const auto payload = [](const json& j) { return byte_slice(share_bytes(encode_cbor(j))); };
  const std::vector<message_body> broadcast_junk = {
      encode_gossip({"broken", 1}, "t", 0, payload({{"k", "d"}, {"d", json::array({1, 2})}})),
      encode_gossip({"broken", 2}, "t", 0, payload({{"k", "zzz"}})),
      message_body(share_bytes(cbor_writer().array(5).uint(0).text("broken").uint(3).text("t").uint(0).take())),
      message_body(share_bytes(cbor_writer().array(3).uint(1).text("broken").uint(4).take())),
  };
  c.run([&]() -> task<> {
    co_await broken->start();
    auto peer = co_await broken->connect(target);
    REQUIRE(peer.has_value());
    for (const auto& j : replica_junk) broken->send(peer->id, channel::replica, encode_body(j));
    for (const auto& b : broadcast_junk) broken->send(peer->id, channel::broadcast, b);
    co_await sched->sleep(500ms);
  });
  auto& victim = *c.nodes[0];
  CHECK(victim.owner->rejected >= 3);  // garbage snapshot, no dots, bad hlc, non-map delta
  CHECK(victim.instances["t"]->counters().bad_messages >= 2);
  CHECK(victim.broadcast->counters().bad_messages >= 2);
  CHECK(victim.owner->maps["t"].entry_count() == 0);
  // Still converging.
  c.put(*c.nodes[2], "t", "after", true);
  CHECK(c.eventually([&] { return c.converged("t") && victim.owner->maps["t"].get("after"); }));
  c.run([&]() -> task<> { co_await broken->stop(); });
}
