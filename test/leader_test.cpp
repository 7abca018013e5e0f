// Leader election with fencing tokens: TCP nodes in one process, and the
// simulator for the partition.
#include <barrel_p2p/leader.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

#include "cluster.hpp"

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

// The resource a leader guards: it accepts a write only with a token
// greater than the last one it accepted.
struct fenced_resource {
  std::uint64_t last = 0;
  std::vector<std::string> writes;
  bool write(std::uint64_t token, const std::string& what) {
    if (token <= last) return false;
    last = token;
    writes.push_back(what);
    return true;
  }
};

// Full nodes on loopback TCP (the one test fixture), each with its
// election service.
struct tcp_cluster : testing::cluster<testing::tcp_net> {
  std::vector<std::shared_ptr<elections>> el;

  node& add(const std::string& id) {
    auto& n = cluster::add(id);
    el.push_back(elections::open(n));
    return n;
  }
  bool agree(const std::string& name, const std::string& who, std::size_t skip = SIZE_MAX) {
    for (std::size_t i = 0; i < el.size(); ++i)
      if (i != skip && el[i]->leader(name) != who) return false;
    return true;
  }
};

task<> lead_into(elections& e, std::string name, std::int64_t priority, std::unique_ptr<campaign>& out) {
  campaign_options o;
  o.priority = priority;
  out = co_await e.lead(std::move(name), o);
}

// Reads a campaign's events until its stream ends.
task<> drain(campaign& cp, std::vector<std::optional<leadership_event>>& out, bool& done) {
  for (;;) {
    auto e = co_await cp.next();
    out.push_back(e);
    if (!e) break;
  }
  done = true;
}

}  // namespace

TEST_CASE("three nodes campaign: all agree on one leader; the others are followers") {
  tcp_cluster c;
  for (int i = 0; i < 3; ++i) c.add("n" + std::to_string(i));
  std::vector<std::unique_ptr<campaign>> camp(3);
  c.run([&]() -> task<> {
    for (int i = 0; i < 3; ++i) co_await lead_into(*c.el[i], "db", 0, camp[i]);
  });
  // Equal priorities: the lowest node id wins.
  REQUIRE(c.eventually([&] { return c.agree("db", "n0"); }));
  CHECK(c.el[0]->is_leader("db"));
  CHECK_FALSE(c.el[1]->is_leader("db"));
  CHECK_FALSE(c.el[2]->is_leader("db"));
  CHECK(c.el[0]->fence("db").has_value());
  CHECK_FALSE(c.el[1]->fence("db").has_value());
}

TEST_CASE("a higher-priority candidate takes over: revoked, then elected with a greater token") {
  tcp_cluster c;
  for (int i = 0; i < 3; ++i) c.add("n" + std::to_string(i));
  std::unique_ptr<campaign> low, high;
  c.run([&]() -> task<> { co_await lead_into(*c.el[0], "svc", 1, low); });
  REQUIRE(low->initial_role() == election_role::leader);
  const auto first = *low->initial_fence();
  REQUIRE(c.eventually([&] { return c.agree("svc", "n0"); }));
  c.run([&]() -> task<> { co_await lead_into(*c.el[2], "svc", 5, high); });
  REQUIRE(c.eventually([&] { return c.agree("svc", "n2") && !c.el[0]->is_leader("svc"); }));
  std::optional<leadership_event> revoked;
  c.run([&]() -> task<> { revoked = co_await low->next(); });
  REQUIRE(revoked.has_value());
  CHECK(revoked->what == leadership_event::kind::revoked);
  std::uint64_t second = high->initial_fence().value_or(0);
  if (high->initial_role() == election_role::follower) {
    // It learned of n0 first; its election arrives as an event.
    std::optional<leadership_event> elected;
    c.run([&]() -> task<> { elected = co_await high->next(); });
    REQUIRE(elected.has_value());
    CHECK(elected->what == leadership_event::kind::elected);
    second = elected->fence;
  }
  CHECK(second > first);
  CHECK(c.el[2]->fence("svc") == second);
}

TEST_CASE("node::stop ends its campaigns' streams: a leader's reader gets revoked, then the end") {
  tcp_cluster c;
  c.add("n0");
  c.add("n1");
  std::unique_ptr<campaign> leader, follower;
  c.run([&]() -> task<> { co_await lead_into(*c.el[0], "job", 0, leader); });
  REQUIRE(leader->initial_role() == election_role::leader);
  REQUIRE(c.eventually([&] { return c.agree("job", "n0"); }));
  c.run([&]() -> task<> { co_await lead_into(*c.el[1], "job", 0, follower); });
  REQUIRE(follower->initial_role() == election_role::follower);
  // Readers already waiting when the nodes stop: before, they waited until
  // the campaign was destroyed.
  std::vector<std::optional<leadership_event>> leader_events, follower_events;
  bool leader_done = false, follower_done = false;
  boost::asio::co_spawn(c.io, drain(*leader, leader_events, leader_done), boost::asio::detached);
  boost::asio::co_spawn(c.io, drain(*follower, follower_events, follower_done), boost::asio::detached);
  c.run([&]() -> task<> {
    co_await c.nodes[1]->stop();
    co_await c.nodes[0]->stop();
  });
  REQUIRE(c.eventually([&] { return leader_done && follower_done; }, 10s));
  REQUIRE(leader_events.size() == 2);
  CHECK(leader_events[0]->what == leadership_event::kind::revoked);
  CHECK_FALSE(leader_events[1].has_value());
  CHECK_FALSE(c.el[0]->is_leader("job"));
  CHECK_FALSE(c.el[0]->fence("job").has_value());
  REQUIRE(follower_events.size() == 1);
  CHECK_FALSE(follower_events[0].has_value());
}

TEST_CASE("stop the leader's node: a survivor is elected with a strictly greater token") {
  tcp_cluster c;
  for (int i = 0; i < 3; ++i) c.add("n" + std::to_string(i));
  std::vector<std::unique_ptr<campaign>> camp(3);
  c.run([&]() -> task<> {
    for (int i = 0; i < 3; ++i) co_await lead_into(*c.el[i], "db", 0, camp[i]);
  });
  REQUIRE(c.eventually([&] { return c.agree("db", "n0") && c.el[0]->is_leader("db"); }));
  // The survivors linked to each other first. (Otherwise they connect only
  // as n0 goes, and a full sync made by one before it saw n0 go down can
  // bring n0's candidacy back to the other, which already dropped it: a
  // known limit of liveness-driven removal, see docs/concepts/leader-election.md.)
  REQUIRE(c.eventually([&] {
    return c.nodes[1]->membership().is_active("n2") && c.nodes[2]->membership().is_active("n1");
  }));
  const auto dead_token = *c.el[0]->fence("db");
  fenced_resource resource;
  CHECK(resource.write(dead_token, "from n0"));
  // n0's node stops abruptly (its campaign object stays: no resignation).
  c.run([&]() -> task<> { co_await c.nodes[0]->net().stop(); });
  REQUIRE(c.eventually([&] { return c.el[1]->is_leader("db") && c.agree("db", "n1", 0); }));
  const auto new_token = *c.el[1]->fence("db");
  CHECK(new_token > dead_token);
  CHECK(resource.write(new_token, "from n1"));
  // The old leader, unaware, tries with its stale token: refused.
  CHECK_FALSE(resource.write(dead_token, "stale write from n0"));
  CHECK(resource.writes == std::vector<std::string>{"from n0", "from n1"});
}

TEST_CASE("resign: the next candidate takes over with a greater token") {
  tcp_cluster c;
  for (int i = 0; i < 3; ++i) c.add("n" + std::to_string(i));
  std::vector<std::unique_ptr<campaign>> camp(3);
  c.run([&]() -> task<> {
    for (int i = 0; i < 3; ++i) co_await lead_into(*c.el[i], "job", 0, camp[i]);
  });
  REQUIRE(c.eventually([&] { return c.agree("job", "n0") && c.el[0]->is_leader("job"); }));
  const auto before = *c.el[0]->fence("job");
  c.run([&]() -> task<> { co_await camp[0]->resign(); });
  REQUIRE(c.eventually([&] { return c.agree("job", "n1") && c.el[1]->is_leader("job"); }));
  CHECK(*c.el[1]->fence("job") > before);
  CHECK_FALSE(c.el[0]->is_leader("job"));
  // Dropping a campaign object withdraws too.
  const auto second = *c.el[1]->fence("job");
  camp[1].reset();
  REQUIRE(c.eventually([&] { return c.agree("job", "n2") && c.el[2]->is_leader("job"); }));
  CHECK(*c.el[2]->fence("job") > second);
}

TEST_CASE("partition: each side may elect; after the heal one leader, and new tokens exceed all seen") {
  testing::cluster<testing::sim_net> c(7);
  std::vector<std::shared_ptr<elections>> el;
  std::vector<std::unique_ptr<campaign>> camp(4);
  for (std::size_t i = 0; i < 4; ++i)
    el.push_back(elections::open(c.add("s" + std::to_string(i), [i](node_config& cfg) {
      cfg.membership.seed = 100 + i;
      cfg.broadcast.seed = 200 + i;
    })));
  c.spawn([&]() -> task<> {
    for (int i = 0; i < 4; ++i) co_await lead_into(*el[i], "db", 0, camp[i]);
  });
  auto& net = c.net;
  net.run_for(30s);
  auto leaders = [&](std::initializer_list<int> ids) {
    std::set<std::string> seen;
    for (int i : ids) seen.insert(el[i]->leader("db").value_or("none"));
    return seen;
  };
  REQUIRE(leaders({0, 1, 2, 3}) == std::set<std::string>{"s0"});
  // Split {s0, s1} | {s2, s3}: the right side loses s0 and elects s2.
  net.partition({"s0", "s1"}, {"s2", "s3"});
  net.run_for(60s);
  CHECK(leaders({2, 3}) == std::set<std::string>{"s2"});
  CHECK(leaders({0, 1}) == std::set<std::string>{"s0"});
  CHECK(el[2]->is_leader("db"));
  const auto left_token = *el[0]->fence("db");
  const auto right_token = *el[2]->fence("db");
  CHECK(right_token > left_token);  // s2 advanced past the mark it had seen
  // Heal. The overlay reconnects across (view repair), full sync merges the
  // candidate sets and the marks: one leader again.
  net.heal();
  const bool one = net.run_until([&] {
    return leaders({0, 1, 2, 3}) == std::set<std::string>{"s0"} && !el[2]->is_leader("db");
  }, 600s);
  CHECK(one);
  const auto seen_max = std::max(left_token, right_token);
  for (auto& e : el) CHECK(e->high_water_mark("db") >= seen_max);
  // A new term after the heal (s0 resigns): its token beats both sides'.
  c.spawn([&]() -> task<> { co_await camp[0]->resign(); });
  CHECK(net.run_until([&] { return el[1]->is_leader("db"); }, 60s));
  CHECK(*el[1]->fence("db") > seen_max);
  c.run([&]() -> task<> {
    camp.clear();  // campaigns end on the timeline, before the nodes stop
    co_return;
  });
}

namespace {

// A member that speaks the election instance's protocol with lies.
struct hostile_owner final : replica_callbacks {
  task<> merge_delta(const std::string&, const json&) override { co_return; }
  task<> apply_full_sync(const std::string&, const json&) override { co_return; }
  task<std::optional<json>> full_sync_snapshot(const std::string&) override { co_return std::nullopt; }
  task<> remove_node(const std::string&, const std::string&) override { co_return; }
};

json fence_marks(const std::string& name, std::uint64_t mark) {
  json f = json::object();
  f[name] = mark;
  return json{{"f", std::move(f)}};
}

}  // namespace

TEST_CASE("a member cannot wrap fencing tokens: marks no honest clock could issue are refused") {
  tcp_cluster c;
  std::vector<std::string> log;
  for (int i = 0; i < 2; ++i) c.add("n" + std::to_string(i));
  // The hostile member: a node without elections, running the elections'
  // replica instance by hand to gossip fencing marks of its choosing.
  auto cfg = testing::tcp_config("evil");  // the fixture's secret
  cfg.contacts.push_back(c.nodes[0]->self().address);
  c.nodes.push_back(std::make_unique<node>(c.io.get_executor(), cfg));
  auto& evil = *c.nodes.back();
  c.run([&]() -> task<> { co_await evil.start(); });
  hostile_owner owner;
  auto rep = replica::start(evil.replicas(), "barrel_p2p.leader", owner);

  std::vector<std::unique_ptr<campaign>> camp(2);
  c.run([&]() -> task<> {
    for (int i = 0; i < 2; ++i) co_await lead_into(*c.el[i], "job", 1 - i, camp[i]);
  });
  REQUIRE(c.eventually([&] { return c.agree("job", "n0") && c.el[0]->is_leader("job"); }));
  const auto first = *c.el[0]->fence("job");

  // UINT64_MAX - 1 made the next term UINT64_MAX and the one after 0; an
  // hour ahead is a valid timestamp no honest clock issues either.
  const auto hour_ahead = hlc_timestamp{evil.clock().wall_ms() + 3'600'000, 0}.pack();
  c.run([&]() -> task<> {
    co_await rep->broadcast_custom(fence_marks("job", UINT64_MAX - 1));
    co_await rep->broadcast_custom(fence_marks("job", UINT64_MAX));
    co_await rep->broadcast_custom(fence_marks("job", hour_ahead));
  });
  // A mark within the window is a legitimate one: it is merged, and the next
  // term goes past it (the witness that the custom broadcasts arrive).
  const auto near = hlc_timestamp{evil.clock().wall_ms() + 30'000, 0}.pack();
  c.run([&]() -> task<> { co_await rep->broadcast_custom(fence_marks("job", near)); });
  REQUIRE(c.eventually([&] { return c.el[0]->high_water_mark("job") == near && c.el[1]->high_water_mark("job") == near; }));

  // Three terms: each token strictly greater, none anywhere near the top.
  std::vector<std::uint64_t> tokens{first};
  c.run([&]() -> task<> { co_await camp[0]->resign(); });
  REQUIRE(c.eventually([&] { return c.agree("job", "n1") && c.el[1]->is_leader("job"); }));
  tokens.push_back(*c.el[1]->fence("job"));
  c.run([&]() -> task<> { co_await lead_into(*c.el[0], "job", 5, camp[0]); });
  REQUIRE(c.eventually([&] { return c.agree("job", "n0") && c.el[0]->is_leader("job"); }));
  tokens.push_back(*c.el[0]->fence("job"));
  CHECK(tokens[1] > tokens[0]);
  CHECK(tokens[1] > near);
  CHECK(tokens[2] > tokens[1]);
  for (auto t : tokens) CHECK(t < hour_ahead);
  for (auto& e : c.el) CHECK(e->high_water_mark("job") < hour_ahead);
  c.run([&]() -> task<> { co_await rep->stop(); });
}
