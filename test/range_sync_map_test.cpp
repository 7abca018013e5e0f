// Maps syncing by range reconciliation on the simulated network: equal maps
// exchange a fingerprint and nothing else; after a partition, only what
// differs crosses; a joiner gets the whole map; removes stay removed.
#include "cluster.hpp"

#include <doctest/doctest.h>

#include <set>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

// The one fixture (cluster.hpp) with a map "kv" open on every node.
struct sim_maps : cluster<sim_net> {
  std::vector<std::shared_ptr<map>> maps;

  static sim_config network() {
    sim_config c;
    c.latency = 5ms;
    return c;
  }

  explicit sim_maps(std::size_t count) : cluster(17, network()) {
    for (std::size_t i = 0; i < count; ++i) add_with_map("n" + std::to_string(i));
  }

  node& add_with_map(const std::string& id) {
    auto& n = add(id);
    maps.push_back(map::open(n, "kv"));
    return n;
  }

  void put(std::size_t i, std::string key, json value) {
    bool done = false;
    boost::asio::co_spawn(io, maps[i]->put(std::move(key), std::move(value)), [&](std::exception_ptr e) {
      REQUIRE_FALSE(e);
      done = true;
    });
    while (!done) net.run_for(1ms);
  }
  void remove(std::size_t i, std::string key) {
    bool done = false;
    boost::asio::co_spawn(io, maps[i]->remove(std::move(key)), [&](std::exception_ptr e) {
      REQUIRE_FALSE(e);
      done = true;
    });
    while (!done) net.run_for(1ms);
  }

  // Every map holds the same values and as many entries (tombstones
  // included) as the first.
  bool converged(const std::vector<std::size_t>& which) const {
    const auto& first = *maps[which.front()];
    const auto list = first.to_list();
    for (auto i : which)
      if (maps[i]->entry_count() != first.entry_count() || maps[i]->to_list() != list) return false;
    return true;
  }
  std::vector<std::size_t> all() const {
    std::vector<std::size_t> v(maps.size());
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = i;
    return v;
  }

  std::uint64_t items_pushed() const {
    std::uint64_t n = 0;
    for (const auto& m : maps) n += m->replica_stats().reconcile_items_sent;
    return n;
  }
  std::uint64_t rounds() const {
    std::uint64_t n = 0;
    for (const auto& m : maps) n += m->replica_stats().reconcile_rounds;
    return n;
  }

  ~sim_maps() {
    spawn([this]() -> task<> {
      for (auto& m : maps) co_await m->close();
    });
    net.run_for(10s);
    stop_all();
  }
};

}  // namespace

TEST_CASE("equal maps: a reconciliation round is one fingerprint message, and no entry moves") {
  sim_maps c(3);
  for (int i = 0; i < 2000; ++i) c.put(static_cast<std::size_t>(i % 3), "k" + std::to_string(i), i);
  REQUIRE(c.net.run_until([&] { return c.converged(c.all()); }, 60s));
  c.net.run_for(15s);  // what was in flight settles
  const auto pushed = c.items_pushed();
  const auto rounds = c.rounds();
  const auto replica_messages = c.net.stats().per_channel_sent[static_cast<std::size_t>(channel::replica)];
  c.net.run_for(60s);  // idle: about 12 rounds per node (anti_entropy_interval 5 s)
  const auto new_rounds = c.rounds() - rounds;
  const auto new_messages = c.net.stats().per_channel_sent[static_cast<std::size_t>(channel::replica)] - replica_messages;
  MESSAGE("idle minute: ", new_rounds, " rounds, ", new_messages, " replica messages, ",
          c.items_pushed() - pushed, " entries pushed");
  CHECK(new_rounds >= 20);
  CHECK(new_messages == new_rounds);  // the opening fingerprint, answered by silence
  CHECK(c.items_pushed() == pushed);
}

TEST_CASE("after a partition, only what differs crosses; removes and the newest write win on both sides") {
  sim_maps c(4);
  for (int i = 0; i < 1000; ++i) c.put(0, "k" + std::to_string(i), i);
  REQUIRE(c.net.run_until([&] { return c.converged(c.all()); }, 60s));
  c.net.run_for(15s);
  const auto before = c.items_pushed();

  c.net.partition({"n0", "n1"}, {"n2", "n3"});
  c.net.run_for(10s);  // links fail, views settle on each side
  for (int i = 0; i < 40; ++i) c.put(0, "left" + std::to_string(i), i);
  for (int i = 0; i < 10; ++i) c.remove(2, "k" + std::to_string(i));
  c.put(3, "both", "right");
  c.net.run_for(1s);
  c.put(1, "both", "left, later");
  c.net.run_for(5s);
  CHECK_FALSE(c.converged(c.all()));
  c.net.heal();
  REQUIRE(c.net.run_until([&] { return c.converged(c.all()); }, 120s));
  const auto pushed = c.items_pushed() - before;
  MESSAGE("healed: ", pushed, " entries pushed for 51 differences on each side of 1,051 keys");
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(c.maps[i]->get("both") == json("left, later"));
    CHECK_FALSE(c.maps[i]->get("k3"));
    CHECK(c.maps[i]->get("left7") == json(7));
    CHECK(c.maps[i]->get("k500") == json(500));
  }
  // Each node can learn a difference from more than one peer, but nobody
  // ships the state: a whole snapshot per sync would be over 1,000 each.
  CHECK(pushed < 1000);
}

TEST_CASE("a node that joins empty gets every entry, tombstones included, by reconciliation") {
  sim_maps c(2);
  for (int i = 0; i < 3000; ++i) c.put(0, "k" + std::to_string(i), i);
  for (int i = 0; i < 100; ++i) c.remove(1, "k" + std::to_string(i));
  REQUIRE(c.net.run_until([&] { return c.converged(c.all()); }, 60s));
  c.add_with_map("late");  // a third node, late
  REQUIRE(c.net.run_until([&] { return c.converged(c.all()); }, 60s));
  CHECK(c.maps[2]->entry_count() == 3000);
  CHECK(c.maps[2]->size() == 2900);
  CHECK(c.maps[2]->replica_stats().syncs_received > 0);
}

// A map opened after its node is connected: the peer's opening (sent on
// peer_up, before the map existed here, or crossing the late starter's own
// opening) and the late start must make one exchange, so every entry
// crosses once. Before, both exchanges pushed everything.
TEST_CASE("a map that starts after the connection is up is synced by one exchange, entries sent once") {
  for (const auto delay : {0ms, 1000ms}) {
    CAPTURE(delay.count());
    sim_maps c(1);
    for (int i = 0; i < 2000; ++i) c.put(0, "k" + std::to_string(i), i);
    const auto pushed_before = c.items_pushed();
    auto& late = c.add("z-late");  // a larger id than n0: n0 opens on peer_up
    c.spawn([&, delay]() -> task<> {
      if (delay > 0ms) co_await late.sched().sleep(delay);  // n0's opening arrives first
      c.maps.push_back(map::open(late, "kv"));
    });
    REQUIRE(c.net.run_until([&] { return c.maps.size() == 2 && c.converged(c.all()); }, 60s));
    c.net.run_for(2s);  // anything still under way
    CHECK(c.maps[1]->size() == 2000);
    CHECK(c.items_pushed() - pushed_before == 2000);
    if (delay == 0ms) CHECK(c.maps[0]->replica_stats().reconcile_crossed == 1);  // n0's won
  }
}
