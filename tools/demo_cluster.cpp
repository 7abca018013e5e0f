// The demo: five nodes on loopback TCP in one process. They authenticate,
// form a HyParView overlay, replicate an OR-Map through Plumtree, lose a
// node and heal, bring it back and let it catch up, and one leaves politely.
// Every step waits for the cluster to reach the state it describes and
// exits non-zero if it does not.
#include <barrel_p2p/crdt_wire.hpp>
#include <barrel_p2p/node.hpp>
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

// A node (node.hpp: transport, membership, broadcast, clock, replica host)
// plus the owner of the demo's replicated map. Members are destroyed in
// reverse: the instance, then the owner, then the stack they refer to.
struct demo_node {
  std::unique_ptr<node> stack;
  std::unique_ptr<map_owner> owner;
  std::shared_ptr<replica> state;
  bool running = true;
};

std::vector<std::unique_ptr<demo_node>> nodes;

demo_node& start_node(boost::asio::io_context& io, const std::string& id) {
  node_config c;
  c.transport.node_id = id;
  c.transport.cluster_secret = "demo-cluster-secret";
  c.transport.heartbeat_interval = 250ms;
  c.transport.heartbeat_timeout = 1500ms;
  c.membership.active_size = 3;  // small views, so five nodes show a real overlay
  c.membership.passive_size = 10;
  c.membership.maintenance_interval = 100ms;
  c.membership.shuffle_interval = 2s;
  c.membership.log = [](const std::string& line) { std::cout << "    [membership] " << line << '\n'; };
  c.replicas.anti_entropy_interval = 2s;
  c.log = [](const std::string&) {};  // the transport, broadcast and replica layers stay quiet
  auto n = std::make_unique<demo_node>();
  n->stack = std::make_unique<node>(io.get_executor(), std::move(c));
  n->owner = std::make_unique<map_owner>(n->stack->clock());
  nodes.push_back(std::move(n));
  return *nodes.back();
}

// No contacts in the config: the demo joins in a step of its own.
task<> boot(demo_node& n) {
  co_await n.stack->start();
  n.state = replica::start(n.stack->replicas(), "demo", *n.owner);
}

// Stops the node without leaving: its neighbours see the sockets close, as
// after a crash. (node::stop() would leave politely first.)
task<> halt(demo_node& n) {
  n.running = false;
  co_await n.stack->replicas().stop();
  co_await n.stack->broadcast().stop();
  co_await n.stack->net().stop();
}

// Leaves the cluster politely (DISCONNECT to the neighbours), then stops.
task<> leave(demo_node& n) {
  n.running = false;
  co_await n.stack->stop();
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
      for (auto& d : n->stack->membership().active_view()) g[n->stack->id()].insert(d.id);
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
    for (auto& d : n->stack->membership().active_view()) active += d.id + " ";
    std::printf("    %-8s %-30s %zu\n", n->stack->id().c_str(), active.c_str(),
                n->stack->membership().passive_view().size());
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
    std::cout << "    " << n.stack->id() << " listens on " << n.stack->self().address.to_string() << '\n';
  }
  std::cout << "2. Nodes 2-5 join through node1 (JOIN, FORWARD_JOIN random walks).\n";
  const auto contact = nodes[0]->stack->self().address;
  for (std::size_t i = 1; i < nodes.size(); ++i) co_await nodes[i]->stack->membership().join(contact);
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
    tc.cluster_secret = "a-wrong-guess-of-the-secret";
    tc.log = [](const std::string& line) { std::cout << "    [intruder] " << line << '\n'; };
    auto intruder = make_tcp_transport(tc, *sched);
    co_await intruder->start();
    auto r = co_await intruder->connect(contact);
    std::uint64_t refused = nodes[0]->stack->net().counters().handshake_failures;
    std::cout << (r ? "  FAILED: intruder got in\n" : "  ok: refused; node1 counted ") << refused
              << " failed handshake(s)\n";
    if (r) ++failures;
    co_await intruder->stop();
  }

  std::cout << "5. node3 crashes (its sockets close); its neighbours repair from passive views.\n";
  co_await halt(*nodes[2]);
  co_await wait_for(*sched, [&] {
    for (auto& n : nodes)
      if (n->running && n->stack->membership().is_active("node3")) return false;
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
    co_await back.stack->membership().join(contact);
    co_await wait_for(*sched, [&] { return all_hold(expected); }, "node3 caught up");
    std::swap(nodes[2], nodes.back());  // keep the table in node order
  }

  std::cout << "7. node5 leaves politely (DISCONNECT to its neighbours).\n";
  co_await leave(*nodes[4]);
  co_await wait_for(*sched, [&] {
    for (auto& n : nodes)
      if (n->running && n->stack->membership().is_active("node5")) return false;
    return healthy();
  }, "remaining four nodes connected");
  print_views();

  std::cout << "8. Shutting down.\n";
  for (auto& n : nodes)
    if (n->running) co_await halt(*n);
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
