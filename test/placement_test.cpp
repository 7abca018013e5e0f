// Sharded placement: TCP nodes in one process, and the simulator for
// failures and joins at ten nodes.
#include <barrel_p2p/placement.hpp>

#include <doctest/doctest.h>

#include "cluster.hpp"

#include <map>
#include <set>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

task<> open_into(node& n, std::string group, placement_options o, std::shared_ptr<placement>& out) {
  out = co_await placement::open(n, std::move(group), o);
}

placement_options shards_of(std::uint32_t shards, double weight = 1.0, bool member = true) {
  placement_options o;
  o.shards = shards;
  o.weight = weight;
  o.member = member;
  return o;
}

// Every shard claimed by exactly one of `ps` (the live ones), and every one
// of them naming that claimant as the owner.
bool settled(const std::vector<std::shared_ptr<placement>>& ps, std::uint32_t shards) {
  std::vector<int> claims(shards, 0);
  for (const auto& p : ps)
    for (auto s : p->owned_shards()) ++claims[s];
  for (std::uint32_t s = 0; s < shards; ++s) {
    if (claims[s] != 1) return false;
    const auto owner = ps[0]->owner(s);
    if (!owner) return false;
    for (const auto& p : ps)
      if (p->owner(s) != owner) return false;
  }
  return true;
}

std::map<std::uint32_t, std::string> owners_of(const placement& p) {
  std::map<std::uint32_t, std::string> out;
  for (std::uint32_t s = 0; s < p.shards(); ++s) out[s] = p.owner(s).value_or("");
  return out;
}

std::size_t moved(const std::map<std::uint32_t, std::string>& a, const std::map<std::uint32_t, std::string>& b) {
  std::size_t n = 0;
  for (const auto& [s, owner] : a) n += b.at(s) != owner;
  return n;
}

}  // namespace

TEST_CASE("rendezvous scores and shard_of are stable across processes and builds") {
  // Pinned values: a change here moves every shard of every deployed group
  // (and makes nodes of two builds disagree on owners).
  CHECK(shard_of("order-42", 64) == 15);
  CHECK(shard_of("order-42", 1024) == 79);
  CHECK(shard_of("", 1) == 0);
  const auto a = rendezvous_score("g", "n1", 7, 1.0);
  CHECK(a == doctest::Approx(0.55980036237970543).epsilon(1e-12));
  CHECK(rendezvous_score("g", "n2", 7, 1.0) == doctest::Approx(1.257149425113061).epsilon(1e-12));
  CHECK(rendezvous_score("g", "n1", 7, 2.0) == doctest::Approx(2 * a));
  // Spread: 64k keys over 64 shards, every shard within 25 % of the mean.
  std::vector<int> count(64, 0);
  for (int i = 0; i < 65536; ++i) ++count[shard_of("key-" + std::to_string(i), 64)];
  for (int c : count) CHECK((c > 768 && c < 1280));
}

TEST_CASE("three TCP nodes: every shard has one owner, all agree, each owner holds a fence") {
  cluster<tcp_net> c;
  std::vector<std::shared_ptr<placement>> ps(3);
  for (int i = 0; i < 3; ++i) {
    auto& n = c.add("n" + std::to_string(i));
    c.run([&]() -> task<> { co_await open_into(n, "jobs", shards_of(64), ps[i]); });
  }
  REQUIRE(c.eventually([&] { return settled(ps, 64); }));
  for (const auto& p : ps) {
    CHECK(p->members().size() == 3);
    CHECK_FALSE(p->owned_shards().empty());  // 64 shards over 3: never none (p ~ 1e-11)
    for (auto s : p->owned_shards()) {
      REQUIRE(p->fence(s));
      CHECK(*p->fence(s) > 0);
      CHECK(p->owner(s) == c.nodes[&p - &ps[0]]->id());
    }
  }
  // An observer sees the owners and owns nothing.
  auto& watcher = c.add("watcher");
  std::shared_ptr<placement> observer;
  c.run([&]() -> task<> { co_await open_into(watcher, "jobs", shards_of(64, 1, false), observer); });
  REQUIRE(c.eventually([&] { return observer->members().size() == 3 && owners_of(*observer) == owners_of(*ps[0]); }));
  CHECK(observer->owned_shards().empty());
}

TEST_CASE("a member closing the group hands its shards over, with greater fences") {
  cluster<tcp_net> c;
  std::vector<std::shared_ptr<placement>> ps(3);
  for (int i = 0; i < 3; ++i) {
    auto& n = c.add("n" + std::to_string(i));
    c.run([&]() -> task<> { co_await open_into(n, "jobs", shards_of(32), ps[i]); });
  }
  REQUIRE(c.eventually([&] { return settled(ps, 32); }));
  const auto handed = ps[2]->owned_shards();
  std::map<std::uint32_t, std::uint64_t> old_fence;
  for (auto s : handed) old_fence[s] = *ps[2]->fence(s);
  auto released = ps[2]->subscribe();
  c.run([&]() -> task<> { co_await ps[2]->close(); });
  CHECK(released.pending() == handed.size());
  std::vector<std::shared_ptr<placement>> rest{ps[0], ps[1]};
  REQUIRE(c.eventually([&] { return settled(rest, 32); }));
  for (auto s : handed) {
    const auto& now_owner = ps[0]->owner(s) == "n0" ? ps[0] : ps[1];
    CHECK(*now_owner->fence(s) > old_fence[s]);
  }
}

TEST_CASE("bad options are refused") {
  cluster<tcp_net> c;
  auto& n = c.add("n0");
  auto refused = [&](std::string group, placement_options o) {
    bool threw = false;
    c.run([&]() -> task<> {
      try {
        co_await placement::open(n, group, o);
      } catch (const std::invalid_argument&) {
        threw = true;
      }
    });
    return threw;
  };
  CHECK(refused("", shards_of(8)));
  CHECK(refused("a\nb", shards_of(8)));
  CHECK(refused("g", shards_of(0)));
  CHECK(refused("g", shards_of(70000)));
  CHECK(refused("g", shards_of(8, 0)));
  CHECK(refused("g", shards_of(8, -1)));
}

TEST_CASE("simulated 10 nodes, 3 crash: every shard has exactly one owner again, and only their shards moved") {
  constexpr std::uint32_t shards = 256;
  sim_nodes s(21);
  std::vector<std::shared_ptr<placement>> ps(10);
  for (int i = 0; i < 10; ++i) {
    auto& n = s.add("s" + std::to_string(i));
    s.run([&, i]() -> task<> { co_await open_into(n, "work", shards_of(shards), ps[i]); });
  }
  REQUIRE(s.run_until([&] { return settled(ps, shards); }, 120s));
  // The owners' tokens reached every node as marks (gossip, merged by max):
  // what makes a later owner's token greater even when its clock is behind.
  REQUIRE(s.run_until([&] {
    for (std::uint32_t sh = 0; sh < shards; ++sh) {
      const auto fence = *ps[s.index_of(*ps[0]->owner(sh))]->fence(sh);
      for (const auto& p : ps)
        if (p->high_water_mark(sh) < fence) return false;
    }
    return true;
  }, 30s));
  const auto before = owners_of(*ps[0]);
  std::map<std::uint32_t, std::uint64_t> marks;
  for (std::uint32_t sh = 0; sh < shards; ++sh) marks[sh] = ps[0]->high_water_mark(sh);

  const std::set<std::string> killed{"s2", "s5", "s8"};
  std::size_t ideal = 0;  // the shards the killed nodes owned: these must move, no others
  for (const auto& [sh, owner] : before) ideal += killed.contains(owner);
  // Each node to be killed must be in someone's active view when it dies:
  // only a peer_down there starts the probe and the down notice that drop
  // its registration (docs/concepts/registry.md, Known limits). A node
  // between links at that instant (seed 21 caught s8 so) stays listed.
  REQUIRE(s.run_until([&] {
    for (const auto& n : s.nodes)
      if (n->membership().active_view().empty()) return false;
    return true;
  }, 60s));
  const auto killed_at = s.net.now();
  for (const auto& id : killed) s.net.kill(id);
  std::vector<std::shared_ptr<placement>> live;
  for (int i = 0; i < 10; ++i)
    if (!killed.contains("s" + std::to_string(i))) live.push_back(ps[i]);
  const bool ok = s.run_until([&] {
    if (!settled(live, shards)) return false;
    for (const auto& p : live)
      if (p->members().size() != 7) return false;
    return true;
  }, 300s);
  REQUIRE(ok);
  const auto after = owners_of(*live[0]);
  const auto count = moved(before, after);
  MESSAGE("3 of 10 nodes crashed: ", count, " of ", shards, " shards moved (ideal ", ideal, "), settled after ",
          std::chrono::duration_cast<std::chrono::milliseconds>(s.net.now() - killed_at).count(), " ms");
  CHECK(count <= 2 * ideal);
  CHECK(count == ideal);  // rendezvous hashing moves exactly the orphans
  for (const auto& [sh, owner] : after) {
    CHECK_FALSE(killed.contains(owner));
    if (!killed.contains(before.at(sh))) continue;
    // The new owner's token is past every token of the shard it had heard of.
    const auto fence = ps[s.index_of(owner)]->fence(sh);
    REQUIRE(fence);
    CHECK(*fence > marks[sh]);
  }
}

TEST_CASE("simulated join of an 11th node: about a eleventh of the shards move, all to it") {
  constexpr std::uint32_t shards = 1024;
  sim_nodes s(22);
  std::vector<std::shared_ptr<placement>> ps(11);
  for (int i = 0; i < 10; ++i) {
    auto& n = s.add("s" + std::to_string(i));
    s.run([&, i]() -> task<> { co_await open_into(n, "work", shards_of(shards), ps[i]); });
  }
  std::vector<std::shared_ptr<placement>> first(ps.begin(), ps.begin() + 10);
  REQUIRE(s.run_until([&] { return settled(first, shards); }, 120s));
  const auto before = owners_of(*ps[0]);
  auto& n = s.add("s10");
  s.run([&]() -> task<> { co_await open_into(n, "work", shards_of(shards), ps[10]); });
  REQUIRE(s.run_until([&] { return settled(ps, shards) && ps[10]->members().size() == 11; }, 120s));
  const auto after = owners_of(*ps[0]);
  const auto count = moved(before, after);
  const double ideal = shards / 11.0;
  MESSAGE("an 11th node joined: ", count, " of ", shards, " shards moved (ideal ", ideal, ")");
  CHECK(count <= 2 * ideal);
  CHECK(count == ps[10]->owned_shards().size());  // every moved shard went to the joiner
}

TEST_CASE("weights: a member of weight 3 owns about three times the shards of one of weight 1") {
  constexpr std::uint32_t shards = 2048;
  sim_nodes s(23);
  std::vector<std::shared_ptr<placement>> ps(4);
  for (int i = 0; i < 4; ++i) {
    auto& n = s.add("s" + std::to_string(i));
    s.run([&, i]() -> task<> { co_await open_into(n, "w", shards_of(shards, i == 0 ? 3.0 : 1.0), ps[i]); });
  }
  REQUIRE(s.run_until([&] { return settled(ps, shards); }, 120s));
  const double heavy = ps[0]->owned_shards().size();
  const double light = (ps[1]->owned_shards().size() + ps[2]->owned_shards().size() + ps[3]->owned_shards().size()) / 3.0;
  MESSAGE("weight 3: ", heavy, " shards; weight 1: ", light, " on average");
  CHECK(heavy / light > 2.5);
  CHECK(heavy / light < 3.5);
}
