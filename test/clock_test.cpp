// Clock skew: the offset estimate and the verdict (pure), the probe messages,
// and whole nodes on the simulated network with shifted wall clocks:
// measurement, the warning, refused writes, the reason entries are dropped.
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/detail/clock_messages.hpp>
#include <barrel_p2p/clock_monitor.hpp>
#include <barrel_p2p/leader.hpp>
#include <barrel_p2p/map.hpp>

#include "cluster.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

}  // namespace

TEST_CASE("measure_offset: the peer's reading plus half the round trip, minus ours") {
  // The peer read 1,000 ms; the answer took 100 ms there and back; we read 1,500 on receipt.
  auto s = measure_offset(1'000, 1'500, 100ms);
  CHECK(s.offset == duration{-450});
  CHECK(s.round_trip == 100ms);
  CHECK(measure_offset(200'000, 80'000, 0ms).offset == duration{120'000});
}

TEST_CASE("clock_filter: the sample with the smallest round trip among the last N") {
  clock_filter f(3);
  CHECK_FALSE(f.best());
  f.add({duration{500}, 40ms});
  f.add({duration{100}, 2ms});
  f.add({duration{300}, 9ms});
  CHECK(f.best()->offset == duration{100});
  f.add({duration{700}, 30ms});  // pushes out the 40 ms sample
  f.add({duration{800}, 30ms});  // pushes out the 2 ms one
  CHECK(f.size() == 3);
  CHECK(f.best()->offset == duration{300});
  f.add({duration{-5}, 9ms});  // equal round trips: the latest wins
  CHECK(f.best()->offset == duration{-5});
}

TEST_CASE("judge_offsets: ahead of most measured peers by more than the maximum") {
  const auto max = duration{60'000};
  std::vector<duration> two_of_three{duration{-120'000}, duration{-119'000}, duration{10}};
  auto v = judge_offsets(two_of_three, max);
  CHECK(v.measured == 3);
  CHECK(v.behind == 2);
  CHECK(v.ahead_of_cluster());
  CHECK_FALSE(v.behind_cluster());
  CHECK(v.median_offset == duration{-119'000});

  std::vector<duration> one_of_two{duration{-120'000}, duration{0}};
  CHECK_FALSE(judge_offsets(one_of_two, max).ahead_of_cluster());  // a tie is not "most"
  CHECK(judge_offsets(one_of_two, max).median_offset == duration{-60'000});

  std::vector<duration> exactly_max{duration{-60'000}};
  CHECK_FALSE(judge_offsets(exactly_max, max).ahead_of_cluster());  // within the window is admissible

  std::vector<duration> peers_ahead{duration{90'000}, duration{95'000}, duration{0}};
  CHECK(judge_offsets(peers_ahead, max).behind_cluster());
  CHECK_FALSE(judge_offsets({}, max).ahead_of_cluster());
}

TEST_CASE("clock messages: encode, parse, and refuse what is not one") {
  const auto probe_bytes = encode(clock_probe{12345}).to_bytes();
  auto p = parse_clock_message(probe_bytes);
  REQUIRE(p);
  CHECK(std::get<clock_probe>(*p).sent_ms == 12345);

  const auto answer_bytes = encode(clock_answer{7, 1'700'000'000'000}).to_bytes();
  auto a = parse_clock_message(answer_bytes);
  REQUIRE(a);
  CHECK(std::get<clock_answer>(*a).sent_ms == 7);
  CHECK(std::get<clock_answer>(*a).wall_ms == 1'700'000'000'000);

  auto trailing = probe_bytes;
  trailing.push_back(0);
  CHECK_FALSE(parse_clock_message(trailing));
  CHECK_FALSE(parse_clock_message(encode_cbor(json::array({2, 1}))));          // unknown kind
  CHECK_FALSE(parse_clock_message(encode_cbor(json::array({0}))));             // no time
  CHECK_FALSE(parse_clock_message(encode_cbor(json::array({1, 1}))));          // an answer without a wall time
  CHECK_FALSE(parse_clock_message(encode_cbor(json::array({0, "x"}))));
  CHECK_FALSE(parse_clock_message(encode_cbor(json::array({1, 1, std::uint64_t{1} << 44}))));  // no HLC holds it
  CHECK_FALSE(parse_clock_message({}));
}

namespace {

// Three nodes on the simulated network; node "c" may run with a shifted
// wall clock. Symmetric latency without jitter makes Cristian's estimate
// exact to the millisecond.
struct skewed_cluster : cluster<sim_net> {
  std::vector<std::shared_ptr<map>> maps;
  std::vector<std::string> log;

  static sim_config network() {
    sim_config c;
    c.latency = 5ms;
    c.jitter = 0ms;
    return c;
  }

  explicit skewed_cluster(clock_skew_policy policy = clock_skew_policy::refuse, duration c_skew = 120s)
      : cluster(1, network()) {
    const auto tweak = [&](node_config& cfg) {
      cfg.replicas.anti_entropy_interval = 2s;
      cfg.clocks.policy = policy;
      cfg.log = [this](const std::string& line) {
        log.push_back(line);
        if (std::getenv("BARREL_TEST_LOG")) std::fprintf(stderr, "%s\n", line.c_str());
      };
    };
    maps.push_back(map::open(add("a", tweak), "kv"));
    maps.push_back(map::open(add("b", tweak), "kv"));
    auto& c = create("c", tweak);
    net.set_wall_skew("c", c_skew);
    maps.push_back(map::open(start(c), "kv"));
    net.run_for(10s);
  }

  node& at(std::size_t i) { return *nodes[i]; }

  std::optional<peer_clock> estimate(std::size_t observer, const std::string& peer) {
    for (auto& p : nodes[observer]->clocks().peers())
      if (p.peer_id == peer) return p;
    return std::nullopt;
  }

  // Runs a put to completion on the simulated timeline; returns what it threw.
  std::exception_ptr put(std::size_t i, std::string key, json value) {
    std::exception_ptr error;
    bool done = false;
    boost::asio::co_spawn(io, maps[i]->put(std::move(key), std::move(value)), [&](std::exception_ptr e) {
      error = e;
      done = true;
    });
    net.run_for(1s);
    REQUIRE(done);
    return error;
  }

  ~skewed_cluster() { stop_all(); }  // the nodes log into `log`

  bool logged(const std::string& needle) const {
    return std::any_of(log.begin(), log.end(), [&](const std::string& l) { return l.find(needle) != std::string::npos; });
  }

};

}  // namespace

TEST_CASE("every node measures each active peer's offset; the skewed node knows it is ahead") {
  skewed_cluster c;
  for (std::size_t i : {0u, 1u}) {
    auto e = c.estimate(i, "c");
    REQUIRE(e);
    CHECK(std::abs(e->offset.count() - 120'000) <= 1);
    CHECK(e->round_trip == 10ms);
    CHECK(e->samples >= 1);
    auto healthy = c.estimate(i, i == 0 ? "b" : "a");
    REQUIRE(healthy);
    CHECK(std::abs(healthy->offset.count()) <= 1);
    CHECK_FALSE(c.at(i).clocks().ahead_of_cluster());
    CHECK_FALSE(c.at(i).clocks().verdict().behind_cluster());  // one peer of two is not most
  }
  auto from_c = c.estimate(2, "a");
  REQUIRE(from_c);
  CHECK(std::abs(from_c->offset.count() + 120'000) <= 1);
  CHECK(c.at(2).clocks().ahead_of_cluster());
  CHECK(c.at(2).clocks().verdict().behind == 2);
  CHECK(c.at(2).clocks().counters().answers_received >= 2);
  // Logged once per peer and rate-limited: a warning about c on a and b, and c's own verdict.
  CHECK(c.logged("a clock: peer c's wall clock is +120.000 s from ours"));
  CHECK(c.logged("c clock: this node's timestamps are too far ahead for 1 of 1 measured active peers"));
  c.net.run_for(30s);  // many more probes, within one warn_interval
  CHECK(c.at(0).clocks().counters().warnings == 1);
}

TEST_CASE("a node ahead of the cluster refuses puts, removes and candidacies; reads work; writes resume once its clock is back") {
  skewed_cluster c;
  REQUIRE(c.put(0, "k", 1) == nullptr);
  c.net.run_for(2s);
  REQUIRE(c.maps[2]->get("k") == json(1));

  auto error = c.put(2, "k", 2);
  REQUIRE(error);
  try {
    std::rethrow_exception(error);
  } catch (const clock_skew_error& e) {
    CHECK(std::abs(e.ahead_by().count() - 120'000) <= 1);
    CHECK(std::string(e.what()).find("ahead of the median of its peers") != std::string::npos);
  }
  CHECK(c.maps[2]->get("k") == json(1));  // nothing written, reads unaffected
  CHECK(c.maps[2]->counters().puts == 0);
  CHECK(c.at(2).clocks().counters().writes_refused == 1);
  CHECK(c.at(2).clocks().refusing_writes());

  std::exception_ptr lead_error;
  boost::asio::co_spawn(c.io, [&]() -> task<> {
    auto e = elections::open(c.at(2));
    co_await e->lead("scheduler");
  }, [&](std::exception_ptr e) { lead_error = e; });
  c.net.run_for(1s);
  CHECK(lead_error);

  // NTP fixed. c's HLC absorbed a's write with its wall clock 120 s ahead,
  // and an HLC never steps back: its next timestamp stays ~120 s ahead of
  // the peers until real time catches up to within the maximum offset.
  c.net.set_wall_skew("c", 0ms);
  c.net.run_for(10s);
  CHECK(c.at(2).clocks().refusing_writes());
  CHECK(c.at(2).clocks().verdict().stamp_lead > 100s);
  CHECK_FALSE(c.at(2).clocks().verdict().behind_cluster());
  REQUIRE(c.put(2, "k", 3) != nullptr);  // these writes would all be dropped by a and b
  c.net.run_for(60s);
  CHECK_FALSE(c.at(2).clocks().refusing_writes());
  REQUIRE(c.put(2, "k", 4) == nullptr);
  CHECK(c.logged("c clock: this node's timestamps are back in range"));
  c.net.run_for(2s);
  for (auto& m : c.maps) CHECK(m->get("k") == json(4));
  for (auto& m : c.maps) CHECK(m->counters().rejected_remote == 0);  // nothing c acknowledged was dropped
}

TEST_CASE("policy warn: the skewed node acknowledges, the peers drop the write and count it as clock_ahead") {
  skewed_cluster c(clock_skew_policy::warn);
  CHECK(c.at(2).clocks().ahead_of_cluster());
  CHECK_FALSE(c.at(2).clocks().refusing_writes());
  REQUIRE(c.put(2, "early", "from the future") == nullptr);
  c.net.run_for(5s);  // gossip and a couple of anti-entropy rounds
  CHECK(c.maps[2]->get("early") == json("from the future"));
  for (std::size_t i : {0u, 1u}) {
    CHECK_FALSE(c.maps[i]->get("early"));
    const auto counts = c.maps[i]->counters();
    CHECK(counts.rejected_clock_ahead >= 1);
    CHECK(counts.rejected_remote == counts.rejected_clock_ahead);  // nothing else was wrong with it
  }
  CHECK(c.logged("a map kv: refused 1 peer entries stamped up to"));
  CHECK(c.logged("; written by c"));
}

TEST_CASE("a node behind the cluster says so and keeps accepting its own writes") {
  skewed_cluster c(clock_skew_policy::refuse, -120s);
  const auto v = c.at(2).clocks().verdict();
  CHECK(v.behind_cluster());
  CHECK_FALSE(c.at(2).clocks().refusing_writes());
  CHECK(c.logged("c clock: this node's wall clock is behind 1 of 1 measured active peers"));
  REQUIRE(c.put(2, "past", 1) == nullptr);  // a timestamp in the past is admissible everywhere
  c.net.run_for(2s);
  for (auto& m : c.maps) CHECK(m->get("past") == json(1));
}

TEST_CASE("answers to no probe, from strangers or repeated, change no estimate") {
  skewed_cluster c(clock_skew_policy::refuse, 0ms);
  auto raw = c.net.add_node("raw");
  std::vector<clock_answer> answers;
  raw->on_message(channel::clock, [&](const std::string&, const byte_slice& body) {
    if (auto m = parse_clock_message(body.bytes()))
      if (auto* a = std::get_if<clock_answer>(&*m)) answers.push_back(*a);
    return true;
  });
  bool connected = false;
  boost::asio::co_spawn(c.io, [&]() -> task<> {
    co_await raw->start();
    connected = (co_await raw->connect(c.at(0).self().address)).has_value();
  }, boost::asio::detached);
  c.net.run_for(1s);
  REQUIRE(connected);
  const auto before = c.at(0).clocks().counters();
  // A stranger's forged answer, an answer carrying a far-off clock, garbage.
  raw->send("a", channel::clock, encode(clock_answer{0, 1'000}));
  raw->send("a", channel::clock, encode_body(json::array({9, 9})));
  // A probe is answered with this node's wall clock, whoever asks.
  raw->send("a", channel::clock, encode(clock_probe{42}));
  c.net.run_for(1s);
  const auto after = c.at(0).clocks().counters();
  CHECK(after.unexpected_answers == before.unexpected_answers + 1);
  CHECK(after.bad_messages == before.bad_messages + 1);
  REQUIRE(answers.size() == 1);
  CHECK(answers[0].sent_ms == 42);
  const auto now = c.at(0).sched().wall_ms();  // the answer was read one hop after the probe left, a second ago
  CHECK(answers[0].wall_ms >= now - 1'000);
  CHECK(answers[0].wall_ms <= now - 990);
  for (auto& p : c.at(0).clocks().peers()) CHECK(std::abs(p.offset.count()) <= 1);
  c.net.run_for(1s);
  raw.reset();
}
