// The demo: five nodes on loopback TCP in one process. They authenticate,
// form a HyParView overlay, replicate an OR-Map through Plumtree, lose a
// node and heal, bring it back and let it catch up, and one leaves politely.
// Every step waits for the cluster to reach the state it describes and
// exits non-zero if it does not.
#include <barrel_p2p/crdt_wire.hpp>
#include <barrel_p2p/hyparview.hpp>
#include <barrel_p2p/replica.hpp>
#include <barrel_p2p/tcp_transport.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <queue>
#include <set>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

// The owner of the replicated state: an OR-Map fed through crdt_wire.
struct map_owner final : replica_callbacks {
  explicit map_owner(hlc_clock& c) : clock(c) {}
  hlc_clock& clock;
  ormap map;
  task<> merge_delta(const std::string&, const json& delta) override {
    crdt_wire::ingest(map, delta, clock);
    co_return;
  }
  task<> apply_full_sync(const std::string&, const json& snapshot) override {
    crdt_wire::ingest(map, snapshot, clock);
    co_return;
  }
  task<std::optional<json>> full_sync_snapshot(const std::string&) override {
    if (map.entry_count() == 0) co_return std::nullopt;
    co_return crdt_wire::encode_map(map);
  }
  task<> remove_node(const std::string&, const std::string&) override { co_return; }
  bool anti_entropy() const override { return true; }
};

struct demo_node {
  std::unique_ptr<scheduler> sched;
  std::unique_ptr<transport> net;
  std::unique_ptr<hyparview> membership;
  std::unique_ptr<plumtree> broadcast;
  std::unique_ptr<hlc_clock> clock;
  std::unique_ptr<replica_host> replicas;
  std::unique_ptr<map_owner> owner;
  std::shared_ptr<replica> state;
  bool running = true;
};

std::vector<std::unique_ptr<demo_node>> nodes;

demo_node& start_node(boost::asio::io_context& io, const std::string& id) {
  auto n = std::make_unique<demo_node>();
  n->sched = make_real_scheduler(io.get_executor());
  tcp_transport_config tc;
  tc.node_id = id;
  tc.cluster_secret = "demo-secret";
  tc.heartbeat_interval = 250ms;
  tc.heartbeat_timeout = 1500ms;
  tc.log = [](const std::string&) {};
  n->net = make_tcp_transport(tc, *n->sched);
  hyparview_config hc;
  hc.active_size = 3;  // small views, so five nodes show a real overlay
  hc.passive_size = 10;
  hc.maintenance_interval = 100ms;
  hc.shuffle_interval = 2s;
  hc.log = [](const std::string& line) { std::cout << "    [membership] " << line << '\n'; };
  n->membership = std::make_unique<hyparview>(*n->net, *n->sched, hc);
  n->broadcast = std::make_unique<plumtree>(*n->net, *n->membership, *n->sched);
  n->clock = std::make_unique<hlc_clock>();
  replica_config rc;
  rc.anti_entropy_interval = 2s;
  n->replicas = std::make_unique<replica_host>(*n->net, *n->membership, *n->broadcast, *n->sched, *n->clock, rc);
  n->owner = std::make_unique<map_owner>(*n->clock);
  nodes.push_back(std::move(n));
  return *nodes.back();
}

task<> boot(demo_node& n) {
  co_await n.net->start();
  n.membership->start();
  n.broadcast->start();
  n.replicas->start();
  n.state = replica::start(*n.replicas, "demo", *n.owner);
}

task<> shut(demo_node& n) {
  n.running = false;
  co_await n.replicas->stop();
  co_await n.broadcast->stop();
  co_await n.net->stop();
}

// Every running node holds exactly `expected` (key -> value).
bool all_hold(const std::map<std::string, json>& expected) {
  for (auto& n : nodes) {
    if (!n->running) continue;
    auto list = n->owner->map.to_list();
    if (list.size() != expected.size()) return false;
    for (auto& [k, v] : list)
      if (!expected.contains(k) || expected.at(k) != v) return false;
  }
  return true;
}

task<> put(demo_node& n, const std::string& key, json value) {
  replica_update u = replica_add{key, std::move(value)};
  co_await n.state->broadcast_update(std::move(u));
}

task<> remove(demo_node& n, const std::string& key) {
  replica_update u = replica_remove{key};
  co_await n.state->broadcast_update(std::move(u));
}

// Symmetric, non-empty, connected over the running nodes.
bool healthy() {
  std::map<std::string, std::set<std::string>> g;
  for (auto& n : nodes)
    if (n->running)
      for (auto& d : n->membership->active_view()) g[n->net->self().id].insert(d.id);
  std::size_t running = 0;
  for (auto& n : nodes) running += n->running;
  if (g.size() != running) return false;
  for (auto& [a, peers] : g)
    for (auto& b : peers)
      if (!g.contains(b) || !g[b].contains(a)) return false;
  std::set<std::string> seen{g.begin()->first};
  std::queue<std::string> todo;
  todo.push(g.begin()->first);
  while (!todo.empty()) {
    for (auto& p : g[todo.front()])
      if (seen.insert(p).second) todo.push(p);
    todo.pop();
  }
  return seen.size() == g.size();
}

void print_views() {
  std::printf("    %-8s %-30s %s\n", "node", "active view", "passive");
  for (auto& n : nodes) {
    if (!n->running) continue;
    std::string active;
    for (auto& d : n->membership->active_view()) active += d.id + " ";
    std::printf("    %-8s %-30s %zu\n", n->net->self().id.c_str(), active.c_str(),
                n->membership->passive_view().size());
  }
}

int failures = 0;

task<bool> wait_for(scheduler& sched, const std::function<bool()>& done, const char* what) {
  const auto start = sched.now();
  while (!done()) {
    if (sched.now() - start > 30s) {
      std::cout << "  FAILED: " << what << " did not happen within 30 s\n";
      ++failures;
      co_return false;
    }
    co_await sched.sleep(2ms);  // the polling step bounds the precision of the figure
  }
  std::cout << "  ok: " << what << " after " << (sched.now() - start).count() << " ms\n";
  co_return true;
}

task<> demo(boost::asio::io_context& io) {
  auto sched = make_real_scheduler(io.get_executor());
  std::cout << "1. Starting five nodes on 127.0.0.1 (random ports), cluster secret shared.\n";
  for (int i = 1; i <= 5; ++i) {
    auto& n = start_node(io, "node" + std::to_string(i));
    co_await boot(n);
    std::cout << "    " << n.net->self().id << " listens on " << n.net->self().address.to_string() << '\n';
  }
  std::cout << "2. Nodes 2-5 join through node1 (JOIN, FORWARD_JOIN random walks).\n";
  const auto contact = nodes[0]->net->self().address;
  for (std::size_t i = 1; i < nodes.size(); ++i) co_await nodes[i]->membership->join(contact);
  co_await wait_for(*sched, healthy, "overlay symmetric and connected");
  print_views();

  std::cout << "3. node1 writes two keys; Plumtree gossips the deltas to every node.\n";
  std::map<std::string, json> expected;
  co_await put(*nodes[0], "colour", "blue");
  co_await put(*nodes[0], "answer", 42);
  expected = {{"colour", "blue"}, {"answer", 42}};
  co_await wait_for(*sched, [&] { return all_hold(expected); }, "both keys readable on all five nodes");
  std::cout << "   node4 overwrites a key, node2 removes another (tombstone).\n";
  co_await put(*nodes[3], "colour", "green");
  co_await remove(*nodes[1], "answer");
  expected = {{"colour", "green"}};
  co_await wait_for(*sched, [&] { return all_hold(expected); }, "overwrite and removal everywhere");

  std::cout << "4. An intruder with the wrong secret tries to connect.\n";
  {
    tcp_transport_config tc;
    tc.node_id = "intruder";
    tc.cluster_secret = "guess";
    tc.log = [](const std::string& line) { std::cout << "    [intruder] " << line << '\n'; };
    auto intruder = make_tcp_transport(tc, *sched);
    co_await intruder->start();
    auto r = co_await intruder->connect(contact);
    std::uint64_t refused = nodes[0]->net->counters().handshake_failures;
    std::cout << (r ? "  FAILED: intruder got in\n" : "  ok: refused; node1 counted ") << refused
              << " failed handshake(s)\n";
    if (r) ++failures;
    co_await intruder->stop();
  }

  std::cout << "5. node3 crashes (its sockets close); its neighbours repair from passive views.\n";
  co_await shut(*nodes[2]);
  co_await wait_for(*sched, [&] {
    for (auto& n : nodes)
      if (n->running && n->membership->is_active("node3")) return false;
    return healthy();
  }, "survivors healed into one overlay");
  print_views();
  std::cout << "   While node3 is down, node5 writes.\n";
  co_await put(*nodes[4], "written-while-down", true);
  expected["written-while-down"] = true;
  co_await wait_for(*sched, [&] { return all_hold(expected); }, "the four survivors agree");

  std::cout << "6. node3 restarts with empty state and rejoins: full sync brings it up to date,\n"
               "   and the removed key stays removed.\n";
  {
    auto& back = start_node(io, "node3");
    co_await boot(back);
    co_await back.membership->join(contact);
    co_await wait_for(*sched, [&] { return all_hold(expected); }, "node3 caught up");
    std::swap(nodes[2], nodes.back());  // keep the table in node order
  }

  std::cout << "7. node5 leaves politely (DISCONNECT to its neighbours).\n";
  co_await nodes[4]->membership->leave();
  co_await shut(*nodes[4]);
  co_await wait_for(*sched, [&] {
    for (auto& n : nodes)
      if (n->running && n->membership->is_active("node5")) return false;
    return healthy();
  }, "remaining four nodes connected");
  print_views();

  std::cout << "8. Shutting down.\n";
  for (auto& n : nodes)
    if (n->running) co_await shut(*n);
}

}  // namespace

int main() {
  boost::asio::io_context io;
  bool done = false;
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await demo(io);
    done = true;
  }, [&](std::exception_ptr e) {
    if (e) {
      try { std::rethrow_exception(e); } catch (const std::exception& ex) { std::cout << "demo failed: " << ex.what() << '\n'; }
      ++failures;
    }
    io.stop();
  });
  io.run();
  if (!done) ++failures;
  std::cout << (failures ? "demo: FAILED\n" : "demo: every step converged\n");
  nodes.clear();
  return failures ? 1 : 0;
}
