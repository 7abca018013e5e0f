// The member directory: TCP nodes in one process, and the simulator for a
// crash among 20 nodes.
#include <barrel_p2p/members.hpp>

#include <doctest/doctest.h>

#include "cluster.hpp"

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

task<> open_into(node& n, member_tags tags, std::shared_ptr<members>& out) {
  out = co_await members::open(n, std::move(tags));
}

member_tags tags_for(int i) {
  member_tags t;
  t["role"] = i % 2 == 0 ? "db" : "web";
  t["zone"] = "zone-" + std::to_string(i % 3);
  return t;
}

std::vector<std::string> ids(const std::vector<member>& ms) {
  std::vector<std::string> out;
  for (const auto& m : ms) out.push_back(m.id);
  return out;
}

}  // namespace

TEST_CASE("every node lists every member with its address and tags; filters; tag updates; a departure") {
  cluster<tcp_net> c;
  std::vector<std::shared_ptr<members>> dirs(4);
  for (int i = 0; i < 4; ++i) {
    auto& n = c.add("n" + std::to_string(i));
    c.run([&]() -> task<> { co_await open_into(n, tags_for(i), dirs[i]); });
  }
  REQUIRE(c.eventually([&] {
    for (auto& d : dirs)
      if (d->list().size() != 4) return false;
    return true;
  }));
  const auto seen = dirs[3]->get("n1");
  REQUIRE(seen);
  CHECK(seen->address == c.nodes[1]->self().address.to_string());
  CHECK(seen->tags == tags_for(1));
  CHECK(seen->since_ms > 0);
  member_tags db;
  db["role"] = "db";
  CHECK(ids(dirs[1]->list(db)) == std::vector<std::string>{"n0", "n2"});
  member_tags db_zone0 = db;
  db_zone0["zone"] = "zone-0";
  CHECK(ids(dirs[1]->list(db_zone0)) == std::vector<std::string>{"n0"});

  auto events = dirs[0]->watch();
  member_tags upgraded = tags_for(2);
  upgraded["version"] = "2.0";
  c.run([&]() -> task<> { co_await dirs[2]->set_tags(upgraded); });
  REQUIRE(c.eventually([&] { return dirs[0]->get("n2") && dirs[0]->get("n2")->tags == upgraded; }));
  c.run([&]() -> task<> { co_await c.nodes[3]->stop(); });
  REQUIRE(c.eventually([&] { return !dirs[0]->get("n3") && !dirs[1]->get("n3") && !dirs[2]->get("n3"); }));
  std::vector<member_event> seen_events;
  c.run([&]() -> task<> {
    for (int k = 0; k < 2; ++k) seen_events.push_back(*co_await events.next());
  });
  CHECK(seen_events[0].what == member_event::kind::updated);
  CHECK(seen_events[0].who.id == "n2");
  CHECK(seen_events[1].what == member_event::kind::left);
  CHECK(seen_events[1].who.id == "n3");
}

TEST_CASE("tags over the limits are refused") {
  cluster<tcp_net> c;
  auto& n = c.add("n0");
  auto refused = [&](member_tags t) {
    bool threw = false;
    c.run([&]() -> task<> {
      try {
        co_await members::open(n, t);
      } catch (const std::invalid_argument&) {
        threw = true;
      }
    });
    return threw;
  };
  member_tags empty_key;
  empty_key[""] = "x";
  CHECK(refused(empty_key));
  member_tags long_value;
  long_value["k"] = std::string(members::max_tag_value_bytes + 1, 'v');
  CHECK(refused(long_value));
  member_tags many;
  for (std::size_t i = 0; i <= members::max_tags; ++i) many["t" + std::to_string(i)] = "v";
  CHECK(refused(many));
}

TEST_CASE("simulated crash among 20 nodes: the member is gone from every directory, with a left event") {
  sim_nodes s(41);
  std::vector<std::shared_ptr<members>> dirs(20);
  for (int i = 0; i < 20; ++i) {
    auto& n = s.add("s" + std::to_string(i));
    s.run([&, i]() -> task<> { co_await open_into(n, tags_for(i), dirs[i]); });
  }
  REQUIRE(s.run_until([&] {
    for (auto& d : dirs)
      if (d->list().size() != 20) return false;
    return true;
  }, 60s));
  auto events = dirs[0]->watch();
  s.net.kill("s13");
  REQUIRE(s.run_until([&] {
    for (int i = 0; i < 20; ++i)
      if (i != 13 && dirs[i]->get("s13")) return false;
    return true;
  }, 120s));
  std::optional<member_event> ev;
  s.run([&]() -> task<> { ev = co_await events.next(); }, 10s);
  REQUIRE(ev);
  CHECK(ev->what == member_event::kind::left);
  CHECK(ev->who.id == "s13");
}
