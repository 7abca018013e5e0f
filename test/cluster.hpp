// The one test fixture: a cluster of full nodes (barrel_p2p::node), on
// loopback TCP (cluster<tcp_net>) or on the simulated network (cluster<sim_net>).
// Both add nodes one by one, each joining the first; run a coroutine to its
// end; wait until a condition holds (the limits only catch hangs); stop
// every node at the end. On TCP a node's config starts from the public
// `test` profile (make_node_config); on the simulated network from the
// defaults (the `lan` profile) with seeds from the cluster's seed, so that
// a run replays. `add` takes a tweak for the fields a test changes.
// Tests that exercise one layer alone (a bare transport, membership without
// broadcast) build that layer directly instead.
#pragma once

#include <barrel_p2p/map.hpp>
#include <barrel_p2p/node.hpp>
#include <barrel_p2p/sim_network.hpp>

#include "io_harness.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

namespace barrel_p2p::testing {

using namespace std::chrono_literals;

struct tcp_net {};  ///< real sockets on loopback, real time
struct sim_net {};  ///< the simulated network: virtual time, seeded
template <class Network>
struct cluster;

inline std::filesystem::path temp_dir(const std::string& tag) {
  auto p = std::filesystem::temp_directory_path() /
           ("barrel_p2p_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(std::rand()));
  std::filesystem::remove_all(p);
  return p;
}

inline node_config tcp_config(const std::string& id, const std::filesystem::path& data = {}) {
  auto c = fast_tcp_config(id, "map-test-cluster-secret");
  c.data_dir = data;
  return c;
}

template <>
struct cluster<tcp_net> {
  boost::asio::io_context io;
  std::vector<std::unique_ptr<node>> nodes;

  // The limits only catch hangs (see io_harness.hpp).
  void run(const std::function<task<>()>& body, duration limit = 60s) { testing::run(io, body, limit); }
  bool eventually(const std::function<bool()>& cond, duration limit = 30s) {
    return testing::eventually(io, cond, limit);
  }

  node& add(const std::string& id, const std::filesystem::path& data = {},
            const std::function<void(node_config&)>& tweak = {}) {
    auto c = tcp_config(id, data);
    if (!nodes.empty()) c.contacts.push_back(nodes[0]->self().address);
    if (tweak) tweak(c);
    nodes.push_back(std::make_unique<node>(io.get_executor(), c));
    auto& n = *nodes.back();
    run([&]() -> task<> { co_await n.start(); });
    return n;
  }

  void stop_all() {
    run([&]() -> task<> {
      for (auto& n : nodes) co_await n->stop();
    });
    nodes.clear();
  }
  ~cluster() {
    // Never throw from here: a failed test is already unwinding.
    try {
      if (!nodes.empty()) stop_all();
    } catch (...) {
    }
  }
};

template <>
struct cluster<sim_net> {
  boost::asio::io_context io;
  sim_network net;
  std::vector<std::unique_ptr<node>> nodes;
  std::uint64_t seed;

  explicit cluster(std::uint64_t s, sim_config sc = {}) : net(io, with_seed(sc, s)), seed(s) {}

  static sim_config with_seed(sim_config sc, std::uint64_t s) {
    sc.seed = s;
    return sc;
  }

  /// Creates node `id` and starts it (joining node 0 unless it is the first);
  /// `tweak` edits its config first. Runs the timeline until it has started.
  node& add(const std::string& id, const std::function<void(node_config&)>& tweak = {}) {
    return start(create(id, tweak));
  }

  /// `add` in two steps, for a test that sets something up on the network
  /// between a node's creation and its start (a shifted wall clock, say).
  node& create(const std::string& id, const std::function<void(node_config&)>& tweak = {}) {
    node_config c;
    c.transport.node_id = id;
    c.membership.seed = seed * 1000 + nodes.size();
    c.broadcast.seed = seed * 2000 + nodes.size();
    c.replicas.seed = seed * 3000 + nodes.size();
    c.log = make_node_config(node_profile::test, id, {}).log;  // silent unless BARREL_TEST_LOG
    if (!nodes.empty()) c.contacts.push_back(peer_address{"sim", 0});
    if (tweak) tweak(c);
    nodes.push_back(std::make_unique<node>(net, c));
    return *nodes.back();
  }
  node& start(node& n) {
    // Shared, not on this stack: after a timeout the coroutine outlives it.
    auto started = std::make_shared<bool>(false);
    spawn([&n, started]() -> task<> {
      co_await n.start();
      *started = true;
    });
    net.run_until([&] { return *started; }, std::chrono::seconds(60));
    return n;
  }

  /// Starts `body` on the timeline (it runs as the timeline runs); keeps
  /// the callable alive until it finishes.
  void spawn(std::function<task<>()> body) {
    boost::asio::co_spawn(io, call(std::move(body)), boost::asio::detached);
  }
  /// Runs `body` to its end; fails the test if `limit` of virtual time
  /// passes first (as cluster<tcp_net>::run does in real time).
  void run(std::function<task<>()> body, duration limit = std::chrono::seconds(120)) {
    auto done = std::make_shared<bool>(false);
    spawn([body = std::move(body), done]() -> task<> {
      co_await body();
      *done = true;
    });
    REQUIRE(net.run_until([&] { return *done; }, limit));
  }
  /// Runs the timeline until `cond` holds; false if `limit` passed first.
  bool run_until(const std::function<bool()>& cond, duration limit) { return net.run_until(cond, limit); }
  /// The same, named as on cluster<tcp_net>.
  bool eventually(const std::function<bool()>& cond, duration limit = std::chrono::seconds(30)) {
    return run_until(cond, limit);
  }

  std::size_t index_of(const std::string& id) const {
    for (std::size_t i = 0; i < nodes.size(); ++i)
      if (nodes[i]->id() == id) return i;
    return nodes.size();
  }

  /// Stops every node (a killed node stops in isolation) and forgets them.
  /// A derived fixture whose members a node's callbacks use (a log it
  /// fills, say) calls this from its own destructor.
  void stop_all() {
    spawn([this]() -> task<> {
      for (auto& n : nodes) co_await n->stop();
    });
    net.run_for(std::chrono::seconds(30));
    nodes.clear();
  }

  ~cluster() {
    // Never throw from here: a failed test is already unwinding.
    try {
      if (!nodes.empty()) stop_all();
    } catch (...) {
    }
  }

 private:
  static task<> call(std::function<task<>()> body) { co_await body(); }
};

/// The names the suites used before there was one fixture.
using tcp_cluster = cluster<tcp_net>;
using sim_nodes = cluster<sim_net>;

}  // namespace barrel_p2p::testing
