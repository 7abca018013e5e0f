// Property tests of the OR-Map merge, with seeded generators: every failure
// prints its seed and case number and replays exactly.
#include <barrel_p2p/ormap.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <random>

using namespace barrel_p2p;

namespace {

const std::vector<std::string> nodes = {"n1", "n2", "n3", "n4"};
const std::vector<std::string> keys = {"a", "b", "c", "d", "e"};

// HLCs drawn from a tiny range so that ties (same HLC, different node, or a
// value and a tombstone at the same HLC) happen often.
hlc_timestamp small_hlc(std::mt19937_64& rng) {
  return {1000 + rng() % 4, static_cast<std::uint32_t>(rng() % 3)};
}

entry random_entry(std::mt19937_64& rng) {
  if (rng() % 3 == 0) return tombstone{small_hlc(rng)};
  const auto& node = nodes[rng() % nodes.size()];
  auto hlc = small_hlc(rng);
  // The payload is a function of the dot: one write, one value, as a real
  // node guarantees by never reusing an HLC.
  return value_entry{json{{"by", node}, {"at", hlc.to_string()}}, {node, hlc}};
}

ormap random_map(std::mt19937_64& rng) {
  ormap m;
  const auto n = rng() % 6;
  for (std::size_t i = 0; i < n; ++i) m.merge_entry(keys[rng() % keys.size()], random_entry(rng));
  return m;
}

ormap merged(ormap a, const ormap& b) {
  a.merge(b);
  return a;
}

}  // namespace

TEST_CASE("merge is commutative, associative and idempotent (500 random cases)") {
  std::mt19937_64 rng(20261126);
  for (int i = 0; i < 500; ++i) {
    CAPTURE(i);
    auto a = random_map(rng), b = random_map(rng), c = random_map(rng);
    CHECK(merged(a, b) == merged(b, a));
    CHECK(merged(merged(a, b), c) == merged(a, merged(b, c)));
    CHECK(merged(a, a) == a);
    CHECK(merged(merged(a, b), b) == merged(a, b));
  }
}

TEST_CASE("replicas receiving the same deltas in any order, with duplicates, converge") {
  std::mt19937_64 rng(77);
  for (int round = 0; round < 200; ++round) {
    CAPTURE(round);
    // Writers produce deltas with their own clocks (skewed wall clocks).
    std::vector<std::pair<std::string, entry>> deltas;
    std::vector<std::uint64_t> walls = {5000, 4990, 5010, 5000};
    std::vector<hlc_clock> clocks;
    for (std::size_t w = 0; w < nodes.size(); ++w) {
      auto* wall = &walls[w];
      clocks.emplace_back([wall] { return *wall; });
    }
    ormap scratch;  // each writer's own state does not matter for this check
    for (int op = 0; op < 40; ++op) {
      const auto w = rng() % nodes.size();
      walls[w] += rng() % 2;
      const auto& key = keys[rng() % keys.size()];
      ormap delta = (rng() % 3 == 0)
                        ? scratch.remove(key, clocks[w].now())
                        : scratch.add(key, json(op), nodes[w], clocks[w].now());
      for (const auto& [k, e] : delta.entries()) deltas.emplace_back(k, e);
    }
    std::vector<ormap> replicas(4);
    for (auto& r : replicas) {
      auto order = deltas;
      // Duplicate a random third of the deltas, then shuffle.
      for (std::size_t d = 0; d < deltas.size() / 3; ++d) order.push_back(deltas[rng() % deltas.size()]);
      std::shuffle(order.begin(), order.end(), rng);
      for (const auto& [k, e] : order) r.merge_entry(k, e);
    }
    for (std::size_t i = 1; i < replicas.size(); ++i) CHECK(replicas[i] == replicas[0]);
    // And the state they agree on is the merge of everything in any order.
    CHECK(replicas[0] == merged(replicas[1], replicas[2]));
  }
}

TEST_CASE("a delayed older add never resurrects a removed key") {
  std::mt19937_64 rng(5);
  for (int i = 0; i < 300; ++i) {
    const std::uint64_t wall = 1000 + rng() % 100;
    const hlc_timestamp add_at{wall, static_cast<std::uint32_t>(rng() % 10)};
    const hlc_timestamp remove_at{wall + 1 + rng() % 10, 0};
    ormap replica;
    replica.merge_entry("k", tombstone{remove_at});
    CHECK_FALSE(replica.merge_entry("k", value_entry{json("old"), {nodes[rng() % 4], add_at}}));
    CHECK_FALSE(replica.get("k").has_value());
    CHECK(replica.is_empty());
  }
}

TEST_CASE("a tombstone wins over a value only when strictly newer") {
  ormap m;
  const hlc_timestamp t{2000, 3};
  m.merge_entry("k", value_entry{json(1), {"n1", t}});
  SUBCASE("equal HLC: the value stays") {
    CHECK_FALSE(m.merge_entry("k", tombstone{t}));
    CHECK(m.get("k") == json(1));
  }
  SUBCASE("newer tombstone: removed") {
    CHECK(m.merge_entry("k", tombstone{{2000, 4}}));
    CHECK_FALSE(m.get("k").has_value());
    CHECK(m.get_entry("k") != nullptr);  // the tombstone is remembered
  }
  SUBCASE("older tombstone: ignored") {
    CHECK_FALSE(m.merge_entry("k", tombstone{{1999, 9}}));
    CHECK(m.get("k") == json(1));
  }
}

TEST_CASE("a newer add after a remove wins") {
  ormap m;
  m.remove("k", {3000, 0});
  CHECK(m.merge_entry("k", value_entry{json("back"), {"n2", {3000, 1}}}));
  CHECK(m.get("k") == json("back"));
  CHECK(m.keys() == std::vector<std::string>{"k"});
}

TEST_CASE("concurrent writes with an equal HLC resolve to the same value everywhere") {
  const hlc_timestamp same{4000, 0};
  const entry from_n1 = value_entry{json("one"), {"n1", same}};
  const entry from_n3 = value_entry{json("three"), {"n3", same}};
  ormap x, y;
  x.merge_entry("k", from_n1);
  x.merge_entry("k", from_n3);
  y.merge_entry("k", from_n3);
  y.merge_entry("k", from_n1);
  CHECK(x == y);
  CHECK(x.get("k") == json("three"));  // greater node id breaks the tie
}

TEST_CASE("tombstone GC removes only tombstones older than the cutoff and never values") {
  std::mt19937_64 rng(11);
  for (int i = 0; i < 200; ++i) {
    ormap m;
    for (int k = 0; k < 30; ++k) {
      const hlc_timestamp at{1000 + rng() % 1000, 0};
      const auto key = "k" + std::to_string(k);
      if (rng() % 2) m.merge_entry(key, tombstone{at});
      else m.merge_entry(key, value_entry{json(k), {"n1", at}});
    }
    const auto values_before = m.to_list();
    const std::uint64_t cutoff = 1000 + rng() % 1000;
    std::size_t expected = 0;
    for (const auto& [k, e] : m.entries())
      if (std::holds_alternative<tombstone>(e) && entry_hlc(e).wall_ms < cutoff) ++expected;
    CHECK(m.gc_tombstones(cutoff) == expected);
    CHECK(m.to_list() == values_before);
    for (const auto& [k, e] : m.entries())
      if (std::holds_alternative<tombstone>(e)) CHECK(entry_hlc(e).wall_ms >= cutoff);
  }
}

TEST_CASE("local add and remove return the one-key delta to broadcast") {
  ormap m;
  auto d1 = m.add("k", json{{"x", 1}}, "n1", {5000, 0});
  CHECK(d1.entry_count() == 1);
  CHECK(d1.get("k") == json{{"x", 1}});
  CHECK(m.get("k") == json{{"x", 1}});
  auto d2 = m.remove("k", {5000, 1});
  CHECK(std::holds_alternative<tombstone>(*d2.get_entry("k")));
  CHECK(m.is_empty());
  CHECK(m.entry_count() == 1);
  // A remote replica applying the deltas in reverse order ends the same.
  ormap other;
  other.merge(d2);
  other.merge(d1);
  CHECK(other == m);
}

TEST_CASE("one entry per key: repeated writes do not grow the entry") {
  ormap m;
  hlc_clock clock([] { return std::uint64_t{6000}; });
  for (int i = 0; i < 1000; ++i) m.add("k", json(i), nodes[i % 4], clock.now());
  CHECK(m.entry_count() == 1);
  CHECK(m.get("k") == json(999));
}

TEST_CASE("absorb_clock moves the clock past everything merged") {
  std::uint64_t wall = 100;
  hlc_clock clock([&wall] { return wall; });
  ormap m;
  m.merge_entry("a", value_entry{json(1), {"n2", {150, 7}}});
  m.merge_entry("b", tombstone{{160, 2}});
  m.absorb_clock(clock);
  CHECK(clock.now() > hlc_timestamp{160, 2});
  // So the next local write beats the merged tombstone.
  m.add("b", json(2), "n1", clock.now());
  CHECK(m.get("b") == json(2));
}

TEST_CASE("remove_values_by drops exactly the keys whose winning write is that node's") {
  ormap m;
  m.merge_entry("mine", value_entry{json(1), {"gone", {10, 0}}});
  m.merge_entry("theirs", value_entry{json(2), {"alive", {10, 0}}});
  m.merge_entry("overwritten", value_entry{json(3), {"gone", {10, 0}}});
  m.merge_entry("overwritten", value_entry{json(4), {"alive", {11, 0}}});
  m.merge_entry("removed", tombstone{{12, 0}});
  auto dropped = m.remove_values_by("gone");
  REQUIRE(dropped.size() == 1);
  CHECK(dropped[0].first == "mine");
  CHECK(dropped[0].second == dot{"gone", {10, 0}});
  CHECK(m.keys() == std::vector<std::string>{"overwritten", "theirs"});
  // Replaying the removal from a log: only while that same write still wins.
  m.merge_entry("again", value_entry{json(5), {"gone", {20, 0}}});
  CHECK_FALSE(m.remove_value_if("again", dot{"gone", {19, 0}}));
  CHECK_FALSE(m.remove_value_if("removed", dot{"gone", {12, 0}}));
  CHECK(m.remove_value_if("again", dot{"gone", {20, 0}}));
  CHECK_FALSE(m.get("again").has_value());
}

TEST_CASE("live_size counts values as entries change, and merge_entry says what it replaced") {
  std::mt19937_64 rng(11);
  ormap m;
  for (int i = 0; i < 2000; ++i) {
    const auto& key = keys[rng() % keys.size()];
    const auto before = m.get_entry(key);
    const bool had_value = before && std::holds_alternative<value_entry>(*before);
    const auto r = m.merge_entry(key, random_entry(rng));
    const auto* now = m.get_entry(key);
    CHECK(r.removed_value == (r.changed && had_value && std::holds_alternative<tombstone>(*now)));
    if (i % 500 == 499) m.gc_tombstones(2000);
    if (i % 700 == 699) m.remove_values_by(nodes[rng() % nodes.size()]);
    REQUIRE(m.live_size() == m.keys().size());
  }
  const ormap copy = m;
  CHECK(copy.live_size() == m.live_size());
  ormap moved = std::move(m);
  CHECK(moved.live_size() == copy.live_size());
  CHECK(m.live_size() == 0);  // NOLINT(bugprone-use-after-move): a moved-from map is empty
  CHECK(m.entry_count() == 0);
  CHECK(ormap().add("k", 1, "n1", {1, 0}).live_size() == 1);  // a delta counts its value
  CHECK(ormap().remove("k", {1, 0}).live_size() == 0);
}

TEST_CASE("expired_tombstones and values_by name what gc_tombstones and remove_values_by drop") {
  std::mt19937_64 rng(5);
  for (int round = 0; round < 50; ++round) {
    ormap m = random_map(rng);
    for (int i = 0; i < 20; ++i) m.merge_entry(keys[rng() % keys.size()], random_entry(rng));
    ormap by_key = m, by_node = m, all_at_once = m;
    for (const auto& k : m.expired_tombstones(1002)) CHECK(by_key.gc_tombstone(k, 1002));
    all_at_once.gc_tombstones(1002);
    CHECK(by_key == all_at_once);
    CHECK(by_key.expired_tombstones(1002).empty());
    const auto named = m.values_by("n2");
    for (const auto& [k, d] : named) CHECK(by_node.remove_value_if(k, d));
    CHECK(m.remove_values_by("n2") == named);
    CHECK(by_node == m);
  }
}
