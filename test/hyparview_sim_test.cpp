// HyParView on the simulated network: hundreds of nodes, failures, healing.
#include "overlay.hpp"

#include <barrel_p2p/hyparview.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

struct sim_node {
  std::unique_ptr<scheduler> sched;
  std::unique_ptr<transport> net;
  std::unique_ptr<hyparview> membership;
};

struct sim_cluster {
  boost::asio::io_context io;
  sim_network net;
  std::vector<sim_node> nodes;

  explicit sim_cluster(std::size_t n, std::uint64_t seed = 1, hyparview_config cfg = {})
      : net(io, [&] {
          sim_config c;
          c.seed = seed;
          return c;
        }()) {
    for (std::size_t i = 0; i < n; ++i) {
      sim_node node;
      node.sched = net.make_scheduler();
      node.net = net.add_node("n" + std::to_string(i));
      auto c = cfg;
      c.seed = seed * 1000 + i + 1;
      node.membership = std::make_unique<hyparview>(*node.net, *node.sched, c);
      node.membership->start();
      nodes.push_back(std::move(node));
    }
  }

  // Node i joins through a random earlier node, one every 50 ms.
  void form() {
    boost::asio::co_spawn(io, [this]() -> task<> {
      random_engine rng(99);
      for (std::size_t i = 1; i < nodes.size(); ++i) {
        const auto contact = std::uniform_int_distribution<std::size_t>(0, i - 1)(rng);
        co_await nodes[i].membership->join({"sim", static_cast<std::uint16_t>(contact)});
        co_await nodes[i].sched->sleep(50ms);
      }
    }, boost::asio::detached);
  }

  overlay live_overlay() {
    std::vector<const hyparview*> live;
    for (auto& n : nodes)
      if (net.alive(n.net->self().id)) live.push_back(n.membership.get());
    return overlay_of(live);
  }
};

}  // namespace

TEST_CASE("500 simulated nodes form a connected overlay with symmetric, bounded views") {
  sim_cluster c(500);
  c.form();
  c.net.run_for(std::chrono::seconds(25) + 500 * 50ms);
  const bool ok = c.net.run_until([&] { return healthy(c.live_overlay(), 5); }, 120s);
  auto g = c.live_overlay();
  CHECK(asymmetric_edges(g).empty());
  CHECK(connected(g));
  CHECK(views_within(g, 1, 5));
  CHECK(ok);
  // Passive views filled by joins and shuffles.
  std::size_t with_passive = 0;
  for (auto& n : c.nodes) with_passive += n.membership->passive_view().size() >= 10;
  CHECK(with_passive > 450);
}

TEST_CASE("kill 50% of 500 nodes at once: the survivors heal into one connected overlay") {
  sim_cluster c(500, 3);
  c.form();
  c.net.run_for(std::chrono::seconds(30) + 500 * 50ms);
  REQUIRE(healthy(c.live_overlay(), 5));
  random_engine rng(5);
  std::vector<std::size_t> order(c.nodes.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (std::size_t i = 0; i < order.size() / 2; ++i) c.net.kill(c.nodes[order[i]].net->self().id);
  const bool healed = c.net.run_until([&] { return healthy(c.live_overlay(), 5); }, 300s);
  auto g = c.live_overlay();
  CHECK(g.size() == 250);
  CHECK(asymmetric_edges(g).empty());
  CHECK(connected(g));
  CHECK(healed);
  std::size_t promotions = 0;
  for (auto& n : c.nodes) promotions += n.membership->counters().promotions;
  CHECK(promotions > 0);
}

TEST_CASE("a stopped node's neighbours see peer_down and refill from the passive view") {
  sim_cluster c(30, 11);
  c.form();
  c.net.run_for(60s);
  REQUIRE(healthy(c.live_overlay(), 5));
  auto victim = c.nodes[7].net->self().id;
  auto neighbours = c.nodes[7].membership->active_view();
  REQUIRE_FALSE(neighbours.empty());
  std::map<std::string, std::string> down_reason;
  for (auto& n : c.nodes)
    n.membership->add_listener([&, id = n.net->self().id](const membership_event& ev) {
      if (ev.what == membership_event::kind::peer_down && ev.peer.id == victim) down_reason[id] = ev.reason;
    });
  c.net.kill(victim);
  const bool healed = c.net.run_until([&] { return healthy(c.live_overlay(), 5); }, 60s);
  CHECK(healed);
  for (const auto& d : neighbours) {
    CAPTURE(d.id);
    // Failure detection, unless a random swap evicted it first.
    CHECK((down_reason[d.id] == "heartbeat_timeout" || down_reason[d.id] == "evicted"));
  }
  // Holes are refilled from passive views: nodes with room pair up. 29
  // nodes of degree 5 would be an odd degree sum, so one may keep a hole.
  c.net.run_for(120s);
  std::size_t with_hole = 0, promotions = 0;
  for (auto& n : c.nodes)
    if (n.net->self().id != victim) {
      with_hole += n.membership->active_view().size() < 5;
      promotions += n.membership->counters().promotions;
    }
  CHECK(with_hole <= 1);
  CHECK(promotions > 0);
  CHECK(healthy(c.live_overlay(), 5));
}

TEST_CASE("leave(): neighbours see peer_down with reason 'left' and the rest stays connected") {
  sim_cluster c(20, 21);
  c.form();
  c.net.run_for(60s);
  REQUIRE(healthy(c.live_overlay(), 5));
  auto& leaver = *c.nodes[4].membership;
  auto neighbours = leaver.active_view();
  std::map<std::string, std::string> reason;
  for (auto& n : c.nodes)
    n.membership->add_listener([&, id = n.net->self().id](const membership_event& ev) {
      if (ev.what == membership_event::kind::peer_down && ev.peer.id == "n4") reason[id] = ev.reason;
    });
  auto stream = leaver.subscribe();
  bool left = false;
  boost::asio::co_spawn(c.io, [&]() -> task<> {
    co_await leaver.leave();
    while (auto ev = co_await stream.next()) left |= ev->what == membership_event::kind::left;
  }, boost::asio::detached);
  c.net.run_for(30s);
  CHECK(left);
  CHECK(leaver.active_view().empty());
  for (const auto& d : neighbours) {
    CAPTURE(d.id);
    CHECK(reason[d.id] == "left");
  }
  std::vector<const hyparview*> rest;
  for (auto& n : c.nodes)
    if (n.net->self().id != "n4") rest.push_back(n.membership.get());
  CHECK(healthy(overlay_of(rest), 5));
}

TEST_CASE("a partition that heals leaves one connected overlay") {
  sim_cluster c(40, 31);
  c.form();
  c.net.run_for(60s);
  REQUIRE(healthy(c.live_overlay(), 5));
  std::set<std::string> left_half, right_half;
  for (std::size_t i = 0; i < c.nodes.size(); ++i)
    (i < 20 ? left_half : right_half).insert(c.nodes[i].net->self().id);
  c.net.partition(left_half, right_half);
  c.net.run_for(60s);
  // While split, no active link crosses the partition.
  for (auto& [a, peers] : c.live_overlay())
    for (auto& b : peers) CHECK(left_half.contains(a) == left_half.contains(b));
  c.net.heal();
  const bool healed = c.net.run_until([&] { return healthy(c.live_overlay(), 5); }, 600s);
  CHECK(healed);
}

// A joiner learns a sample of its contact's views with the JOIN's answer,
// so a partition in its first seconds (before any shuffle) finds it with a
// passive view to repair from. Before, it knew only its first neighbours.
TEST_CASE("a joiner's passive view holds a sample of the overlay right after it joins") {
  hyparview_config cfg;
  cfg.shuffle_interval = 60s;  // no shuffle during the test
  sim_cluster c(30, 7, cfg);
  boost::asio::co_spawn(c.io, [&]() -> task<> {
    for (std::size_t i = 1; i < c.nodes.size(); ++i) {
      co_await c.nodes[i].membership->join({"sim", 0});  // everyone through n0, as daemons do
      co_await c.nodes[i].sched->sleep(20ms);
    }
  }, boost::asio::detached);
  c.net.run_for(2s);
  // Every node that joined after the first few knows more than its active view.
  for (std::size_t i = 10; i < c.nodes.size(); ++i) {
    CAPTURE(i);
    CHECK(c.nodes[i].membership->passive_view().size() >= 3);
  }

  // Split at once into halves: each side repairs from what it knows.
  std::set<std::string> left, right;
  for (std::size_t i = 0; i < c.nodes.size(); ++i) (i < 15 ? left : right).insert(c.nodes[i].net->self().id);
  c.net.partition(left, right);
  c.net.run_for(30s);
  std::size_t alone = 0;
  for (auto& n : c.nodes) alone += n.membership->active_view().empty();
  CHECK(alone == 0);
}
