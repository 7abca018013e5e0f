// Full nodes on the simulated network, for the consumers' suites
// (registry, placement, reminders): nodes added one by one, each joining
// node 0; coroutines spawned onto the virtual timeline; the timeline run
// until a condition holds.
#pragma once

#include <barrel_p2p/node.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace barrel_p2p::testing {

struct sim_nodes {
  boost::asio::io_context io;
  sim_network net;
  std::vector<std::unique_ptr<node>> nodes;
  std::uint64_t seed;

  explicit sim_nodes(std::uint64_t s, sim_config sc = {}) : net(io, with_seed(sc, s)), seed(s) {}

  static sim_config with_seed(sim_config sc, std::uint64_t s) {
    sc.seed = s;
    return sc;
  }

  /// Creates node `id` and starts it (joining node 0 unless it is the first);
  /// `tweak` edits its config first. Runs the timeline until it has started.
  node& add(const std::string& id, const std::function<void(node_config&)>& tweak = {}) {
    node_config c;
    c.transport.node_id = id;
    c.membership.seed = seed * 1000 + nodes.size();
    c.broadcast.seed = seed * 2000 + nodes.size();
    c.replicas.seed = seed * 3000 + nodes.size();
    c.log = [](const std::string& line) {
      if (std::getenv("BARREL_TEST_LOG")) std::fprintf(stderr, "%s\n", line.c_str());
    };
    if (!nodes.empty()) c.contacts.push_back(peer_address{"sim", 0});
    if (tweak) tweak(c);
    nodes.push_back(std::make_unique<node>(net, c));
    auto& n = *nodes.back();
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
  /// Runs `body` to its end (or `limit` of virtual time); true when it ended.
  bool run(std::function<task<>()> body, duration limit = std::chrono::seconds(120)) {
    auto done = std::make_shared<bool>(false);
    spawn([body = std::move(body), done]() -> task<> {
      co_await body();
      *done = true;
    });
    return net.run_until([&] { return *done; }, limit);
  }
  bool run_until(const std::function<bool()>& cond, duration limit) { return net.run_until(cond, limit); }

  std::size_t index_of(const std::string& id) const {
    for (std::size_t i = 0; i < nodes.size(); ++i)
      if (nodes[i]->id() == id) return i;
    return nodes.size();
  }

  ~sim_nodes() {
    try {
      spawn([this]() -> task<> {
        for (auto& n : nodes) co_await n->stop();  // a killed node stops in isolation
      });
      net.run_for(std::chrono::seconds(30));
    } catch (...) {
    }
  }

 private:
  static task<> call(std::function<task<>()> body) { co_await body(); }
};

}  // namespace barrel_p2p::testing
