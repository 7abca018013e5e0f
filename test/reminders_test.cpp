// Durable reminders: TCP nodes with data directories (restart from disk),
// and the simulator for an owner's crash.
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/placement.hpp>
#include <barrel_p2p/reminders.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <doctest/doctest.h>

#include "cluster.hpp"

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

struct delivery {
  std::string node;
  fired_reminder fired;
};

// A handler on one node: records each delivery and, when `complete` is
// set, completes it.
task<> handle(std::shared_ptr<reminders> r, std::string node, event_stream<fired_reminder> stream,
              std::vector<delivery>& log, const bool& complete) {
  while (auto f = co_await stream.next()) {
    log.push_back({node, *f});
    if (complete) co_await r->complete(*f);
  }
}

task<> open_into(node& n, reminder_options o, std::shared_ptr<reminders>& out) {
  out = co_await reminders::open(n, o);
}

reminder_options fast(bool persist) {
  reminder_options o;
  o.persist = persist;
  o.shards = 16;
  o.tick = 20ms;
  o.redeliver_after = 1s;
  return o;
}

std::uint64_t wall_in(node& n, duration d) {
  return n.clock().wall_ms() + static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

// Built outside coroutines: GCC 12 cannot keep a json literal's
// initializer list in a coroutine frame.
json payload(const std::string& key, int value) {
  json p = json::object();
  p[key] = value;
  return p;
}

struct tcp_reminders {
  cluster<tcp_net> c;
  std::vector<std::filesystem::path> dirs;
  std::vector<std::shared_ptr<reminders>> rs;
  std::vector<delivery> log;
  bool complete = true;

  void add(int i, bool persist = true) {
    if (dirs.size() <= static_cast<std::size_t>(i)) dirs.push_back(temp_dir("reminders" + std::to_string(i)));
    auto& n = c.add("n" + std::to_string(i), persist ? dirs[i] : std::filesystem::path{});
    std::shared_ptr<reminders> r;
    c.run([&]() -> task<> { co_await open_into(n, fast(persist), r); });
    boost::asio::co_spawn(c.io, handle(r, n.id(), r->subscribe(), log, complete), boost::asio::detached);
    rs.push_back(r);
  }
  std::size_t fired(const std::string& name) const {
    std::size_t k = 0;
    for (const auto& d : log) k += d.fired.name == name;
    return k;
  }
  ~tcp_reminders() {
    c.stop_all();
    for (const auto& d : dirs) std::filesystem::remove_all(d);
  }
};

}  // namespace

TEST_CASE("a reminder fires once, on the owner of its shard, with that shard's fence; completing removes it") {
  tcp_reminders t;
  for (int i = 0; i < 3; ++i) t.add(i);
  std::shared_ptr<placement> owners;
  t.c.run([&]() -> task<> { owners = co_await placement::open(*t.c.nodes[0], "barrel_p2p.reminders"); });
  REQUIRE(t.c.eventually([&] { return owners->members().size() == 3; }));
  t.c.run([&]() -> task<> { co_await t.rs[1]->schedule("invoice-7", wall_in(*t.c.nodes[1], 300ms), payload("id", 7)); });
  REQUIRE(t.c.eventually([&] { return t.rs[0]->get("invoice-7").has_value() && t.rs[2]->get("invoice-7").has_value(); }));
  REQUIRE(t.c.eventually([&] {
    for (auto& r : t.rs)
      if (r->get("invoice-7")) return false;
    return true;
  }));
  REQUIRE(t.fired("invoice-7") == 1);
  const auto& d = t.log.at(0);
  CHECK(d.fired.payload == payload("id", 7));
  CHECK(d.fired.attempt == 1);
  CHECK(d.node == owners->owner(d.fired.shard));
  const auto& owner = t.rs[t.c.nodes[0]->id() == d.node ? 0 : (t.c.nodes[1]->id() == d.node ? 1 : 2)];
  CHECK(owner->counters().completed == 1);
  t.c.eventually([] { return false; }, 500ms);  // nothing fires again
  CHECK(t.fired("invoice-7") == 1);
}

TEST_CASE("periodic reminders fire every period; cancel stops them") {
  tcp_reminders t;
  for (int i = 0; i < 2; ++i) t.add(i);
  t.c.run([&]() -> task<> { co_await t.rs[0]->schedule("tick", wall_in(*t.c.nodes[0], 100ms), nullptr, 200); });
  REQUIRE(t.c.eventually([&] { return t.fired("tick") >= 3; }));
  const auto r = t.rs[1]->get("tick");
  REQUIRE(r);
  CHECK(r->every_ms == 200);
  bool cancelled = false;
  t.c.run([&]() -> task<> { cancelled = co_await t.rs[1]->cancel("tick"); });
  CHECK(cancelled);
  REQUIRE(t.c.eventually([&] { return !t.rs[0]->get("tick"); }));
  const auto after = t.fired("tick");
  t.c.eventually([] { return false; }, 800ms);
  CHECK(t.fired("tick") <= after + 1);  // at most one already in flight
}

TEST_CASE("a delivery not completed fires again after redeliver_after, same fence, next attempt") {
  tcp_reminders t;
  t.complete = false;
  t.add(0);
  t.c.run([&]() -> task<> { co_await t.rs[0]->schedule("retry", wall_in(*t.c.nodes[0], 50ms)); });
  REQUIRE(t.c.eventually([&] { return t.fired("retry") >= 2; }));
  CHECK(t.log[0].fired.attempt == 1);
  CHECK(t.log[1].fired.attempt == 2);
  CHECK(t.log[1].fired.fence == t.log[0].fired.fence);
  CHECK(t.rs[0]->counters().redelivered >= 1);
  t.c.run([&]() -> task<> { co_await t.rs[0]->complete(t.log[1].fired); });
  CHECK_FALSE(t.rs[0]->get("retry"));
}

TEST_CASE("whole-cluster restart: pending reminders are recovered from disk and fire") {
  tcp_reminders t;
  for (int i = 0; i < 3; ++i) t.add(i);
  t.c.run([&]() -> task<> {
    co_await t.rs[0]->schedule("after-restart-a", wall_in(*t.c.nodes[0], 2s));
    co_await t.rs[1]->schedule("after-restart-b", wall_in(*t.c.nodes[1], 2s));
  });
  REQUIRE(t.c.eventually([&] { return t.rs[2]->list().size() == 2; }));
  t.c.stop_all();
  t.rs.clear();
  CHECK(t.log.empty());
  for (int i = 0; i < 3; ++i) t.add(i);
  CHECK(t.rs[0]->list().size() == 2);  // from disk, before any peer
  REQUIRE(t.c.eventually([&] { return t.fired("after-restart-a") >= 1 && t.fired("after-restart-b") >= 1; }));
  REQUIRE(t.c.eventually([&] {
    for (auto& r : t.rs)
      if (!r->list().empty()) return false;
    return true;
  }));
}

TEST_CASE("bad arguments and a durable store without a data directory are refused") {
  cluster<tcp_net> c;
  auto& n = c.add("n0");
  bool threw = false;
  c.run([&]() -> task<> {
    try {
      co_await reminders::open(n, reminder_options{});
    } catch (const map_error&) {
      threw = true;
    }
  });
  CHECK(threw);
  std::shared_ptr<reminders> r;
  c.run([&]() -> task<> { co_await open_into(n, fast(false), r); });
  auto refused = [&](std::string name, json payload) {
    bool bad = false;
    c.run([&]() -> task<> {
      try {
        co_await r->schedule(name, 1, payload);
      } catch (const std::invalid_argument&) {
        bad = true;
      }
    });
    return bad;
  };
  CHECK(refused("", nullptr));
  CHECK(refused(std::string(257, 'x'), nullptr));
  CHECK(refused("big", std::string(70'000, 'x')));
  CHECK(r->list().empty());
}

TEST_CASE("simulated: the owner crashes before a reminder is due; another node fires it with a greater fence") {
  std::vector<delivery> log;  // outlives the nodes: handlers run until they stop
  const bool complete = true;
  sim_nodes s(31);
  std::vector<std::shared_ptr<reminders>> rs(6);
  for (int i = 0; i < 6; ++i) {
    auto& n = s.add("s" + std::to_string(i));
    s.run([&, i]() -> task<> { co_await open_into(n, fast(false), rs[i]); });
    s.spawn([&, i, id = n.id()]() -> task<> { co_await handle(rs[i], id, rs[i]->subscribe(), log, complete); });
  }
  std::shared_ptr<placement> owners;
  s.run([&]() -> task<> { owners = co_await placement::open(*s.nodes[0], "barrel_p2p.reminders"); });
  REQUIRE(s.run_until([&] { return owners->members().size() == 6; }, 60s));
  // A reminder whose shard s0 does not own (s0 schedules it and survives).
  std::string name;
  for (int k = 0; name.empty(); ++k) {
    auto candidate = "job-" + std::to_string(k);
    const auto o = owners->owner(owners->shard_of(candidate));
    if (o && *o != "s0") name = candidate;
  }
  const auto shard = owners->shard_of(name);
  const auto victim = *owners->owner(shard);
  std::shared_ptr<placement> victim_owners;
  s.run([&]() -> task<> {
    victim_owners = co_await placement::open(*s.nodes[s.index_of(victim)], "barrel_p2p.reminders");
  });
  const auto old_fence = *victim_owners->fence(shard);
  s.run([&]() -> task<> { co_await rs[0]->schedule(name, wall_in(*s.nodes[0], 20s), payload("n", 1)); });
  s.net.run_for(5s);
  s.net.kill(victim);
  REQUIRE(s.run_until([&] { return !log.empty(); }, 120s));
  CHECK(log.size() == 1);
  CHECK(log[0].node != victim);
  CHECK(log[0].fired.name == name);
  CHECK(log[0].fired.fence > old_fence);
  CHECK(s.run_until([&] { return !rs[0]->get(name); }, 30s));
}
