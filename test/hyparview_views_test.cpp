// HyParView's views as pure data (detail/hyparview_views.hpp): bounded,
// disjoint, never this node; eviction and backoff rules. No network.
#include <barrel_p2p/detail/hyparview_views.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <set>

using namespace barrel_p2p;
using barrel_p2p::detail::hyparview_views;

namespace {

peer_descriptor peer(int i) { return peer_descriptor("p" + std::to_string(i), peer_address("10.0.0.1", static_cast<std::uint16_t>(7000 + i))); }

hyparview_config small_config() {
  hyparview_config c;
  c.active_size = 3;
  c.passive_size = 4;
  c.backoff_initial = duration{100};
  c.backoff_max = duration{1000};
  c.passive_max_age = duration{10'000};
  c.passive_max_failures = 3;
  return c;
}

// The invariants every operation keeps.
void check_invariants(const hyparview_views& v, const hyparview_config& c, const std::string& self) {
  CHECK(v.active().size() <= c.active_size);
  CHECK(v.passive().size() <= c.passive_size);
  std::set<std::string> seen;
  for (const auto& d : v.active()) {
    CHECK(d.id != self);
    CHECK(seen.insert(d.id).second);  // no duplicates
  }
  for (const auto& e : v.passive()) {
    CHECK(e.desc.id != self);
    CHECK(seen.insert(e.desc.id).second);  // disjoint from the active view, no duplicates
  }
}

}  // namespace

TEST_CASE("views: never this node, never twice, active and passive disjoint, both bounded") {
  const auto c = small_config();
  random_engine rng(7);
  hyparview_views v("self", c, rng);
  CHECK_FALSE(v.add_active(peer_descriptor("self", peer_address("h", 1))));
  v.add_passive(peer_descriptor("self", peer_address("h", 1)), duration{0});
  CHECK(v.passive().empty());
  for (int i = 0; i < 40; ++i) {
    const auto d = peer(i % 9);
    if (i % 3 == 0) {
      v.make_room(nullptr, duration{i});
      v.add_active(d);
    } else {
      v.add_passive(d, duration{i});
    }
    check_invariants(v, c, "self");
  }
  CHECK(v.active().size() == c.active_size);
  for (int i = 10; i < 16; ++i) v.add_passive(peer(i), duration{50});
  CHECK(v.passive().size() == c.passive_size);
  check_invariants(v, c, "self");
  // Adding an active peer takes it out of the passive view.
  const auto p = v.passive().front().desc;
  v.make_room(nullptr, duration{100});
  CHECK(v.add_active(p));
  CHECK_FALSE(v.is_passive(p.id));
  check_invariants(v, c, "self");
}

TEST_CASE("make_room: only when full; evicts an expendable peer into the passive view") {
  const auto c = small_config();
  random_engine rng(1);
  hyparview_views v("self", c, rng);
  CHECK_FALSE(v.make_room(nullptr, duration{0}).has_value());
  for (int i = 0; i < 3; ++i) CHECK(v.add_active(peer(i)));
  CHECK_FALSE(v.add_active(peer(3)));  // full: room must be made first
  // p0 and p2 are kept: p1 is the only one that may go, whatever the draw.
  for (int round = 0; round < 10; ++round) {
    const auto victim = v.make_room([](const std::string& id) { return id != "p1"; }, duration{5});
    REQUIRE(victim.has_value());
    CHECK(victim->id == "p1");
    CHECK(v.is_passive("p1"));
    CHECK(v.passive().back().refreshed == duration{5});
    CHECK(v.add_active(peer(1)));
  }
  // Everyone kept: one goes all the same.
  const auto victim = v.make_room([](const std::string&) { return true; }, duration{6});
  REQUIRE(victim.has_value());
  CHECK(v.active().size() == 2);
}

TEST_CASE("add_passive: refreshes a known entry; when full, evicts what was just sent away first") {
  const auto c = small_config();
  random_engine rng(3);
  hyparview_views v("self", c, rng);
  for (int i = 0; i < 4; ++i) v.add_passive(peer(i), duration{i});
  v.add_passive(peer(2), duration{50});  // known: refreshed, nothing evicted
  CHECK(v.passive().size() == 4);
  CHECK(std::find_if(v.passive().begin(), v.passive().end(), [](const auto& e) { return e.desc.id == "p2"; })->refreshed ==
        duration{50});
  const std::vector<peer_descriptor> sent{peer(3)};
  v.add_passive(peer(9), duration{60}, &sent);
  CHECK_FALSE(v.is_passive("p3"));
  CHECK(v.is_passive("p9"));
  // Ageing: entries nothing vouched for within passive_max_age go.
  v.expire_passive(duration{10'003});
  CHECK_FALSE(v.is_passive("p0"));
  CHECK(v.is_passive("p2"));
  CHECK(v.is_passive("p9"));
}

TEST_CASE("dial backoff: a failed dial doubles the wait, and enough failures drop the entry") {
  const auto c = small_config();
  random_engine rng(5);
  hyparview_views v("self", c, rng);
  v.add_passive(peer(1), duration{0});
  CHECK(v.dialable(duration{0}).size() == 1);
  v.note_dial_failed("p1", duration{0});  // failure 1: 100 * 2
  CHECK(v.dialable(duration{199}).empty());
  CHECK(v.dialable(duration{200}).size() == 1);
  v.note_dial_failed("p1", duration{200});  // failure 2: 100 * 4
  CHECK(v.dialable(duration{599}).empty());
  CHECK(v.dialable(duration{600}).size() == 1);
  v.note_dial_failed("p1", duration{600});  // failure 3 = passive_max_failures: dropped
  CHECK_FALSE(v.is_passive("p1"));
  // A peer whose connection failed waits one initial backoff.
  v.add_active(peer(2));
  v.remove_active("p2", true, duration{1000});
  v.note_peer_failed("p2", duration{1000});
  CHECK(v.dialable(duration{1099}).empty());
  CHECK(v.dialable(duration{1100}).size() == 1);
  v.postpone("p2", duration{5000});
  CHECK(v.dialable(duration{4999}).empty());
}

TEST_CASE("sample: at most n, without the excluded id, from the given list") {
  const auto c = small_config();
  random_engine rng(11);
  hyparview_views v("self", c, rng);
  std::vector<peer_descriptor> all;
  for (int i = 0; i < 10; ++i) all.push_back(peer(i));
  for (int round = 0; round < 20; ++round) {
    const auto s = v.sample(all, 4, "p3");
    CHECK(s.size() == 4);
    std::set<std::string> ids;
    for (const auto& d : s) {
      CHECK(d.id != "p3");
      CHECK(ids.insert(d.id).second);
    }
  }
  CHECK(v.sample(all, 20).size() == 10);
}
