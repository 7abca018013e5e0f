// Queries with answers: TCP nodes in one process (filters, limits, timeouts,
// forged and repeated answers) and the simulator for answers that come back
// from nodes that are not the asker's neighbours.
#include <barrel_p2p/queries.hpp>

#include <doctest/doctest.h>

#include "cluster.hpp"

#include <boost/asio/detached.hpp>

#include <set>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

task<> open_into(node& n, std::shared_ptr<queries>& out) { out = co_await queries::open(n); }

// Handlers are plain lambdas calling coroutine functions: GCC 12
// miscompiles some capturing coroutine lambdas.
task<std::optional<json>> echo(std::string id, query_request r) {
  json a = json::object();
  a["node"] = id;
  a["echo"] = std::move(r.payload);
  co_return a;
}

// Answers {"node": its id, "echo": the payload}.
query_handler echo_from(std::string id) {
  return [id](query_request r) { return echo(id, std::move(r)); };
}

task<std::optional<json>> sleep_then_answer(node& n, duration d) {
  co_await n.sched().sleep(d);
  co_return json("late");
}

task<std::optional<json>> throw_instead() {
  throw std::runtime_error("broken handler");
  co_return json("never");
}

task<std::optional<json>> note_id(std::uint64_t& seen, std::uint64_t& seen_digest, query_request r) {
  seen = r.id;
  seen_digest = r.digest;
  co_return json(1);
}

task<> collect(queries& q, std::string name, json payload, query_options options, std::vector<query_answer>& out) {
  auto answers = co_await q.ask(std::move(name), std::move(payload), std::move(options));
  while (auto a = co_await answers.next()) out.push_back(std::move(*a));
}

std::set<std::string> nodes_of(const std::vector<query_answer>& answers) {
  std::set<std::string> out;
  for (const auto& a : answers) out.insert(a.node);
  return out;
}

query_options within(duration timeout) {
  query_options o;
  o.timeout = timeout;
  return o;
}

}  // namespace

TEST_CASE("every node that handles a name answers, the asker too; filters by id and by tag; max_answers ends early") {
  cluster<tcp_net> c;
  std::vector<std::shared_ptr<queries>> qs(5);
  std::vector<std::shared_ptr<members>> dirs(5);
  for (int i = 0; i < 5; ++i) {
    auto& n = c.add("n" + std::to_string(i));
    c.run([&]() -> task<> { co_await open_into(n, qs[i]); });
    member_tags t;
    t["role"] = i < 2 ? "db" : "web";
    c.run([&]() -> task<> { dirs[i] = co_await members::open(n, t); });
  }
  for (int i = 0; i < 5; ++i)
    if (i != 3) qs[i]->handle("echo", echo_from("n" + std::to_string(i)));  // n3 does not handle it
  REQUIRE(c.eventually([&] {
    for (auto& d : dirs)
      if (d->list().size() != 5) return false;
    return true;
  }));

  std::vector<query_answer> all;
  c.run([&]() -> task<> { co_await collect(*qs[0], "echo", json("hi"), within(2s), all); });
  CHECK(nodes_of(all) == std::set<std::string>{"n0", "n1", "n2", "n4"});
  CHECK(all.size() == 4);
  for (const auto& a : all) {
    CHECK(a.payload["node"] == a.node);  // the answer is the answering node's own
    CHECK(a.payload["echo"] == "hi");
    CHECK(a.after < 2s);
  }
  CHECK(qs[3]->counters().requests_filtered >= 1);

  std::vector<query_answer> picked;
  auto by_id = within(2s);
  by_id.nodes = {"n2", "n3", "n4"};
  c.run([&]() -> task<> { co_await collect(*qs[1], "echo", json(1), by_id, picked); });
  CHECK(nodes_of(picked) == std::set<std::string>{"n2", "n4"});

  std::vector<query_answer> dbs;
  auto by_tag = within(2s);
  by_tag.tags["role"] = "db";
  c.run([&]() -> task<> { co_await collect(*qs[4], "echo", json(2), by_tag, dbs); });
  CHECK(nodes_of(dbs) == std::set<std::string>{"n0", "n1"});

  // Enough answers end the stream long before the timeout.
  std::vector<query_answer> two;
  auto first_two = within(60s);
  first_two.max_answers = 2;
  const auto t0 = std::chrono::steady_clock::now();
  c.run([&]() -> task<> { co_await collect(*qs[2], "echo", json(3), first_two, two); });
  CHECK(two.size() == 2);
  CHECK(std::chrono::steady_clock::now() - t0 < 30s);
  CHECK(c.eventually([&] { return qs[2]->pending() == 0; }));

  // Nobody handles it: the stream ends empty at the timeout.
  std::vector<query_answer> none;
  c.run([&]() -> task<> { co_await collect(*qs[0], "nobody", json(nullptr), within(300ms), none); });
  CHECK(none.empty());
  CHECK(qs[0]->pending() == 0);
}

TEST_CASE("an answer after the timeout is dropped; a throwing handler answers nothing; forged and repeated answers are counted") {
  cluster<tcp_net> c;
  std::vector<std::shared_ptr<queries>> qs(3);
  for (int i = 0; i < 3; ++i) {
    auto& n = c.add("n" + std::to_string(i));
    c.run([&]() -> task<> { co_await open_into(n, qs[i]); });
  }
  REQUIRE(c.eventually([&] { return c.nodes[0]->net().connected_peers().size() == 2; }));
  auto& n1 = *c.nodes[1];
  qs[1]->handle("slow", [&n1](query_request) { return sleep_then_answer(n1, 800ms); });
  qs[2]->handle("slow", [](query_request) { return throw_instead(); });
  std::vector<query_answer> got;
  c.run([&]() -> task<> { co_await collect(*qs[0], "slow", json(nullptr), within(300ms), got); });
  CHECK(got.empty());
  CHECK(c.eventually([&] { return qs[2]->counters().handler_errors == 1; }));
  // The slow handler finished after the deadline: it sends nothing.
  CHECK(c.eventually([&] { return qs[1]->counters().answers_unsent == 1; }));
  CHECK(qs[0]->counters().answers_received == 0);

  // n2 answers once for real, then forges a second answer to the same
  // query, an answer to a query never asked, and bytes that are no answer.
  std::uint64_t seen_id = 0, seen_digest = 0;
  qs[2]->handle("id", [&seen_id, &seen_digest](query_request r) { return note_id(seen_id, seen_digest, std::move(r)); });
  std::vector<query_answer> once;
  boost::asio::co_spawn(c.io, [&]() -> task<> { co_await collect(*qs[0], "id", json(nullptr), within(1500ms), once); },
                        boost::asio::detached);
  REQUIRE(c.eventually([&] { return qs[0]->counters().answers_received == 1; }));
  auto forged = [&](json m) { return c.nodes[2]->net().send("n0", channel::query, encode_body(m)); };
  json again = json::object();
  again["i"] = seen_id;
  again["q"] = seen_digest;
  again["p"] = 2;
  json unknown = json::object();
  unknown["i"] = seen_id + 12345;
  unknown["q"] = seen_digest;
  unknown["p"] = 3;
  json other_question = json::object();  // the id of the pending query, the digest of another request
  other_question["i"] = seen_id;
  other_question["q"] = seen_digest + 1;
  other_question["p"] = 4;
  CHECK(forged(again));
  CHECK(forged(unknown));
  CHECK(forged(other_question));
  CHECK(forged(json::array({1, 2, 3})));
  CHECK(c.eventually([&] {
    const auto k = qs[0]->counters();
    return k.answers_duplicate == 1 && k.answers_late == 1 && k.answers_foreign == 1 && k.bad_messages == 1;
  }));
  CHECK(c.eventually([&] { return qs[0]->pending() == 0; }));
  CHECK(once.size() == 1);
  CHECK(once.at(0).payload == 1);
  CHECK(c.nodes[0]->net().is_connected("n2"));  // a bad answer is dropped, not a reason to close
}

TEST_CASE("limits: names, payload size, timeout, pending queries") {
  cluster<tcp_net> c;
  auto& n = c.add("n0");
  queries_config small;
  small.max_payload_bytes = 100;
  small.max_pending = 2;
  std::shared_ptr<queries> q;
  c.run([&]() -> task<> { q = co_await queries::open(n, small); });
  auto refused = [&](std::string name, json payload, query_options o) {
    bool threw = false;
    c.run([&]() -> task<> {
      try {
        (void)co_await q->ask(std::move(name), std::move(payload), std::move(o));
      } catch (const std::invalid_argument&) {
        threw = true;
      }
    });
    return threw;
  };
  CHECK(refused("", json(1), within(1s)));
  CHECK(refused(std::string(201, 'x'), json(1), within(1s)));
  CHECK(refused("bad\xff", json(1), within(1s)));
  CHECK(refused("big", json(std::string(200, 'x')), within(1s)));
  CHECK(refused("zero", json(1), within(0ms)));
  CHECK(refused("forever", json(1), within(std::chrono::hours(1))));
  CHECK_THROWS_AS(q->handle("", echo_from("n0")), std::invalid_argument);

  std::vector<event_stream<query_answer>> open;
  bool full = false;
  c.run([&]() -> task<> {
    open.push_back(co_await q->ask("a", json(1), within(10s)));
    open.push_back(co_await q->ask("b", json(1), within(10s)));
    try {
      (void)co_await q->ask("c", json(1), within(10s));
    } catch (const std::length_error&) {
      full = true;
    }
  });
  CHECK(full);
  CHECK(q->pending() == 2);
}

TEST_CASE("30 simulated nodes: every node answers, most of them not the asker's neighbours") {
  sim_nodes s(7);
  std::vector<std::shared_ptr<queries>> qs;
  for (int i = 0; i < 30; ++i) {
    auto& n = s.add("s" + std::to_string(i));
    std::shared_ptr<queries> q;
    s.run([&]() -> task<> { q = co_await queries::open(n); });
    q->handle("who", echo_from(n.id()));
    qs.push_back(q);
  }
  s.net.run_for(20s);
  const auto neighbours = s.nodes[5]->membership().active_view().size();
  std::vector<query_answer> got;
  s.run([&]() -> task<> { co_await collect(*qs[5], "who", json(nullptr), within(10s), got); });
  MESSAGE("s5 has " << neighbours << " neighbours; " << got.size() << " answers");
  CHECK(neighbours < 29);
  CHECK(got.size() == 30);
  CHECK(nodes_of(got).size() == 30);
  std::uint64_t sent = 0;
  for (auto& q : qs) sent += q->counters().answers_sent;
  CHECK(sent == 30);
}
