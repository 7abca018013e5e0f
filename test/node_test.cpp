// Embedding a node: what start() says, waiting to be joined, a duplicate
// node id, how long an opened map lives, and the log line format.
#include <barrel_p2p/log.hpp>
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <doctest/doctest.h>

#include "cluster.hpp"

#include <algorithm>
#include <regex>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

// A port nothing listens on: bound, then closed.
std::uint16_t closed_port(boost::asio::io_context& io) {
  boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();
}

std::uint64_t failures(node& n, handshake_failure why) {
  return n.net().counters().handshake_failures_by_reason[static_cast<std::size_t>(why)];
}

// A node config that keeps its log lines, for the tests that read them.
struct logged_config {
  std::shared_ptr<std::vector<std::string>> lines = std::make_shared<std::vector<std::string>>();
  node_config make(const std::string& id) const {
    auto c = tcp_config(id);
    c.log = [l = lines](const std::string& line) { l->push_back(line); };
    return c;
  }
  bool logged(const std::string& needle) const {
    return std::any_of(lines->begin(), lines->end(), [&](const auto& l) { return l.find(needle) != std::string::npos; });
  }
};

}  // namespace

TEST_CASE("start() says whether and through which contact the node joined") {
  cluster<tcp_net> c;
  auto& first = c.add("first");
  join_result alone, joined, unreachable;
  const peer_address nowhere("127.0.0.1", closed_port(c.io));

  auto joiner_config = tcp_config("joiner");
  joiner_config.contacts = {nowhere, first.self().address};
  node joiner(c.io.get_executor(), joiner_config);
  auto lost_config = tcp_config("lost");
  lost_config.contacts = {nowhere};
  node lost(c.io.get_executor(), lost_config);
  node lone(c.io.get_executor(), tcp_config("lone"));
  c.run([&]() -> task<> {
    alone = co_await lone.start();
    joined = co_await joiner.start();
    unreachable = co_await lost.start();
  });

  CHECK_FALSE(alone.joined);  // no contacts: the first node of a cluster
  CHECK(alone.not_joined.empty());
  CHECK_FALSE(alone.via);

  CHECK(joined.joined);
  REQUIRE(joined.via);
  CHECK(*joined.via == first.self().address);
  CHECK(joined.not_joined == std::vector<peer_address>{nowhere});  // tried first, in order
  CHECK_FALSE(joined.duplicate_id_at);
  CHECK_FALSE(joiner.membership().active_view().empty());

  CHECK_FALSE(unreachable.joined);
  CHECK(unreachable.not_joined == std::vector<peer_address>{nowhere});
  CHECK_FALSE(unreachable.duplicate_id_at);

  c.run([&]() -> task<> {
    co_await joiner.stop();
    co_await lost.stop();
    co_await lone.stop();
  });
}

TEST_CASE("wait_joined: true once a contact that was down comes up; false at its timeout on a lone node") {
  boost::asio::io_context io;
  // The contact's port is reserved now and listened on later.
  const auto port = closed_port(io);
  auto late_config = tcp_config("late");
  late_config.transport.listen_port = port;
  auto early_config = tcp_config("early");
  early_config.contacts = {peer_address("127.0.0.1", port)};
  early_config.membership.backoff_initial = 100ms;
  node early(io.get_executor(), early_config);
  node late(io.get_executor(), late_config);
  node lone(io.get_executor(), tcp_config("lone"));
  bool lone_joined = true, early_joined = false, again = false;
  join_result first;
  run(io, [&]() -> task<> {
    first = co_await early.start();
    co_await lone.start();
    lone_joined = co_await lone.wait_joined(300ms);
    co_await late.start();  // now the contact listens; early's retries reach it
    early_joined = co_await early.wait_joined(30s);
    again = co_await early.wait_joined(0ms);  // already joined: at once
  });
  CHECK_FALSE(first.joined);
  CHECK_FALSE(lone_joined);
  CHECK(early_joined);
  CHECK(again);
  CHECK_FALSE(early.membership().active_view().empty());

  // A waiter is released by stop(), with false.
  bool stopped_waiter = true;
  run(io, [&]() -> task<> {
    auto ex = co_await boost::asio::this_coro::executor;
    boost::asio::co_spawn(ex, [&]() -> task<> { stopped_waiter = co_await lone.wait_joined(60s); },
                          boost::asio::detached);
    co_await lone.sched().sleep(50ms);
    co_await lone.stop();
    co_await lone.sched().sleep(50ms);
    co_await early.stop();
    co_await late.stop();
  });
  CHECK_FALSE(stopped_waiter);
}

TEST_CASE("a node destroyed while someone waits to be joined: the waiter ends with false") {
  sim_nodes s(3);
  auto& lone = s.add("lone");  // nobody to join
  auto result = std::make_shared<std::optional<bool>>();
  s.spawn([&lone, result]() -> task<> { *result = co_await lone.wait_joined(std::chrono::hours(1)); });
  s.net.run_for(1s);
  CHECK_FALSE(result->has_value());
  s.nodes.clear();  // destroyed without stop(), as a crash would
  s.net.run_for(1s);
  // Released at once (before, the frame waited forever, and leaked).
  REQUIRE(result->has_value());
  CHECK_FALSE(**result);
}

TEST_CASE("a second process with the same node id is named as such, not as a connection to self") {
  boost::asio::io_context io;
  logged_config logs_a, logs_b;
  node a(io.get_executor(), logs_a.make("twin"));
  auto cb = logs_b.make("twin");
  std::optional<join_result> result;
  std::unique_ptr<node> b;
  run(io, [&]() -> task<> {
    co_await a.start();
    cb.contacts = {a.self().address};
    b = std::make_unique<node>(co_await boost::asio::this_coro::executor, cb);
    result = co_await b->start();
  });
  REQUIRE(result);
  CHECK_FALSE(result->joined);
  REQUIRE(result->duplicate_id_at);
  CHECK(*result->duplicate_id_at == a.self().address);
  CHECK(eventually(io, [&] { return failures(a, handshake_failure::duplicate_id) > 0; }));
  CHECK(failures(*b, handshake_failure::duplicate_id) > 0);
  CHECK(failures(a, handshake_failure::self) == 0);
  CHECK(failures(*b, handshake_failure::self) == 0);
  CHECK(logs_a.logged("twin tcp: handshake refused [duplicate_id]"));
  CHECK(logs_b.logged("duplicate node id 'twin'"));
  CHECK(a.membership().active_view().empty());

  // Dialling its own address is still "self", and not a duplicate.
  const auto duplicates_before = failures(a, handshake_failure::duplicate_id);
  run(io, [&]() -> task<> {
    const auto self_dial = co_await a.net().connect(a.self().address);
    CHECK_FALSE(self_dial);
    co_await b->stop();
    co_await a.stop();
  });
  CHECK(failures(a, handshake_failure::self) == 2);  // the dialling and the answering end
  CHECK(failures(a, handshake_failure::duplicate_id) == duplicates_before);
}

TEST_CASE("a second node claiming a connected peer's id through a third node is refused; the peer keeps its place") {
  boost::asio::io_context io;
  logged_config logs_hub, logs_twin;
  node hub(io.get_executor(), logs_hub.make("hub"));
  std::unique_ptr<node> real, twin;
  join_result real_joined, twin_joined;
  run(io, [&]() -> task<> {
    auto ex = co_await boost::asio::this_coro::executor;
    co_await hub.start();
    auto rc = tcp_config("shared");
    rc.contacts = {hub.self().address};
    real = std::make_unique<node>(ex, rc);
    real_joined = co_await real->start();
    auto tc = logs_twin.make("shared");
    tc.contacts = {hub.self().address};
    twin = std::make_unique<node>(ex, tc);
    twin_joined = co_await twin->start();
  });
  CHECK(real_joined.joined);
  CHECK_FALSE(twin_joined.joined);
  CHECK_FALSE(twin_joined.duplicate_id_at);  // the hub is not the twin: the daemon keeps retrying
  CHECK(twin_joined.not_joined == std::vector<peer_address>{hub.self().address});
  CHECK(failures(hub, handshake_failure::id_in_use) >= 1);
  CHECK(failures(*twin, handshake_failure::id_in_use) >= 1);
  CHECK(logs_hub.logged("refused a second node with the id 'shared'"));
  CHECK(logs_twin.logged("refused this node: another node with the id 'shared' is connected to it, listening at " +
                         real->self().address.to_string()));
  // The hub's connection to the real node was never replaced.
  CHECK(eventually(io, [&] { return hub.membership().is_active("shared"); }));
  CHECK(hub.net().counters().connections_opened == 1);
  run(io, [&]() -> task<> {
    co_await twin->stop();
    co_await real->stop();
    co_await hub.stop();
  });
}

namespace {
// Attachments that write down when the node stops them.
struct recorder : node::attachment {
  recorder(std::vector<std::string>& log, std::string name) : log(log), name(std::move(name)) {}
  task<> on_node_stop() override {
    log.push_back(name);
    co_return;
  }
  std::vector<std::string>& log;
  std::string name;
};
struct other_recorder : recorder {
  using recorder::recorder;
};
task<> stop_and_note(node& n, bool& done) {
  co_await n.stop();
  done = true;
}
}  // namespace

TEST_CASE("attachments: found by type and name; node::stop stops the newest first") {
  boost::asio::io_context io;
  sim_network net(io);
  node_config c;
  c.transport.node_id = "n0";
  c.log = [](const std::string&) {};
  node n(net, c);
  std::vector<std::string> stopped;
  boost::asio::co_spawn(io, n.start(), boost::asio::detached);
  net.run_for(1s);
  auto first = std::make_shared<recorder>(stopped, "first");
  auto second = std::make_shared<other_recorder>(stopped, "second");
  auto third = std::make_shared<recorder>(stopped, "third");
  n.set_attachment(first, "x");
  n.set_attachment(second, "x");  // same name, another type: both kept
  n.set_attachment(third, "y");
  CHECK(n.find_attachment<recorder>("x") == first);
  CHECK(n.find_attachment<other_recorder>("x") == second);
  CHECK(n.find_attachment<recorder>("y") == third);
  CHECK(n.find_attachment<other_recorder>("y") == nullptr);
  CHECK(n.find_attachment<recorder>() == nullptr);
  n.clear_attachment<recorder>("y");
  CHECK(n.find_attachment<recorder>("y") == nullptr);
  n.set_attachment(third, "y");  // attached again: now the newest
  bool done = false;
  boost::asio::co_spawn(io, stop_and_note(n, done), boost::asio::detached);
  net.run_until([&] { return done; }, 10s);
  REQUIRE(done);
  CHECK(stopped == std::vector<std::string>{"third", "second", "first"});
  CHECK(n.find_attachment<recorder>("x") == nullptr);  // the node let go of them
}

TEST_CASE("an opened map stays open without a handle until close() or node::stop()") {
  cluster<tcp_net> c;
  auto& n = c.add("keeper");
  c.run([&]() -> task<> {
    // The handle is a temporary, gone at the end of the statement.
    co_await map::open(n, "scratch")->put("k", json(1));
  });
  auto m = map::open(n, "scratch");
  CHECK(m->is_open());
  CHECK(m->get("k") == json(1));
  std::weak_ptr<map> weak = m;
  c.run([&]() -> task<> { co_await m->close(); });
  m.reset();
  CHECK(weak.expired());  // closed: the node let go of it
  auto reopened = map::open(n, "scratch");
  CHECK(reopened->is_open());
  CHECK(reopened->size() == 0);  // a new, empty map on a lone node

  c.run([&]() -> task<> { co_await n.stop(); });
  CHECK_FALSE(reopened->is_open());  // node::stop() closed it
  c.nodes.clear();
}

TEST_CASE("a map handle kept past its node fails cleanly") {
  boost::asio::io_context io;
  std::shared_ptr<map> m;
  {
    node n(io.get_executor(), tcp_config("brief"));
    run(io, [&]() -> task<> {
      co_await n.start();
      m = map::open(n, "kept");
      co_await m->put("k", json("v"));
    });
    // Destroyed without stop(): the map must let go of the node's layers.
  }
  CHECK_FALSE(m->is_open());
  CHECK(m->get("k") == json("v"));  // reads keep working on what it held
  bool refused = false;
  run(io, [&]() -> task<> {
    try {
      co_await m->put("k2", json(2));
    } catch (const map_error&) {
      refused = true;
    }
  });
  CHECK(refused);
  m.reset();  // and the last handle goes without touching the node
}

TEST_CASE("log lines: '<node id> <component>: message' from every layer; the default sink adds a UTC timestamp") {
  CHECK(log_line("n0", "tcp", "hello") == "n0 tcp: hello");
  const std::regex stamp(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");
  CHECK(std::regex_match(utc_timestamp(), stamp));

  logged_config logs;
  boost::asio::io_context io;
  node n(io.get_executor(), logs.make("n0"));
  run(io, [&]() -> task<> {
    co_await n.start();
    auto m = map::open(n, "m");
    co_await m->put("k", json(1));
    const auto self_dial = co_await n.net().connect(n.self().address);  // a tcp line
    CHECK_FALSE(self_dial);
    co_await n.stop();
  });
  REQUIRE_FALSE(logs.lines->empty());
  const std::regex format(R"(n0 (tcp|membership|broadcast|replica( [A-Za-z0-9._-]+)?|clock|elections|registry|placement|queries|http|map [A-Za-z0-9._-]+): .+)");
  for (const auto& line : *logs.lines) CHECK_MESSAGE(std::regex_match(line, format), line);
  CHECK(logs.logged("n0 tcp: handshake refused [self]"));
}

TEST_CASE("node profiles: lan is the defaults; local and test share faster timings; test drops logs") {
  const auto lan = make_node_config(node_profile::lan, "n0", "a-cluster-secret-of-16+");
  const node_config defaults;
  CHECK(lan.transport.node_id == "n0");
  CHECK(lan.transport.cluster_secret == "a-cluster-secret-of-16+");
  CHECK(lan.transport.heartbeat_interval == defaults.transport.heartbeat_interval);
  CHECK(lan.transport.heartbeat_timeout == defaults.transport.heartbeat_timeout);
  CHECK(lan.membership.shuffle_interval == defaults.membership.shuffle_interval);
  CHECK(lan.replicas.anti_entropy_interval == defaults.replicas.anti_entropy_interval);
  CHECK_FALSE(static_cast<bool>(lan.log));
  const auto local = make_node_config(node_profile::local, "n1", "a-cluster-secret-of-16+");
  CHECK(local.transport.heartbeat_interval < lan.transport.heartbeat_interval);
  CHECK(local.transport.heartbeat_timeout < lan.transport.heartbeat_timeout);
  CHECK(local.membership.maintenance_interval < lan.membership.maintenance_interval);
  CHECK(local.membership.shuffle_interval < lan.membership.shuffle_interval);
  CHECK(local.replicas.anti_entropy_interval < lan.replicas.anti_entropy_interval);
  CHECK_FALSE(static_cast<bool>(local.log));  // the node's default: standard error
  const auto test = make_node_config(node_profile::test, "n2", "a-cluster-secret-of-16+");
  CHECK(test.transport.heartbeat_timeout == local.transport.heartbeat_timeout);
  CHECK(test.replicas.anti_entropy_interval == local.replicas.anti_entropy_interval);
  REQUIRE(static_cast<bool>(test.log));
  // A node built on each starts (the timings pass the layers' checks).
  boost::asio::io_context io;
  for (auto c : {lan, local, test}) {
    c.log = [](const std::string&) {};
    node n(io.get_executor(), c);
    run(io, [&]() -> task<> {
      co_await n.start();
      co_await n.stop();
    });
  }
}

TEST_CASE("logger: one component's lines; a sink that throws loses the line, not the caller's work") {
  std::vector<std::string> lines;
  const logger log([&](const std::string& l) { lines.push_back(l); }, "n0", "replica");
  log("started");
  log.sub("kv")("inbox full");
  CHECK(lines == std::vector<std::string>{"n0 replica: started", "n0 replica kv: inbox full"});
  CHECK(static_cast<bool>(log));
  CHECK_FALSE(static_cast<bool>(logger()));
  logger()("nowhere");  // silent, not an error
  const logger throwing([](const std::string&) { throw std::runtime_error("disk full"); }, "n0", "tcp");
  CHECK_NOTHROW(throwing("a line"));
  CHECK_NOTHROW(throwing.sub("x")("another"));

  CHECK(exception_text(std::make_exception_ptr(std::runtime_error("boom"))) == "boom");
  CHECK(exception_text(std::make_exception_ptr(42)) == "an exception that is not a std::exception");
  CHECK(exception_text(nullptr) == "no exception");
}

// The contact that takes a node in may be the first to go: the node must
// rejoin through the others it was given (the nemesis found a node alone
// for good: seed 189).
TEST_CASE("a node whose only neighbour goes rejoins through its other contacts") {
  boost::asio::io_context io;
  sim_network net(io);
  std::vector<std::unique_ptr<node>> nodes;
  auto make = [&](const std::string& id, std::vector<peer_address> contacts) {
    node_config c;
    c.transport.node_id = id;
    c.contacts = std::move(contacts);
    c.membership.seed = nodes.size() + 1;
    c.log = [](const std::string&) {};
    nodes.push_back(std::make_unique<node>(net, c));
    auto* n = nodes.back().get();
    boost::asio::co_spawn(io, [n]() -> task<> { co_await n->start(); }, boost::asio::detached);
    net.run_for(1s);
    return n;
  };
  auto* a = make("a", {});
  auto* b = make("b", {a->self().address});
  // c lists a first: a takes it in, so a is its one neighbour at first.
  auto* c = make("c", {a->self().address, b->self().address});
  REQUIRE(c->membership().is_active("a"));
  // Keep c away from b for now, so that a is all c has.
  net.partition({"c"}, {"b"});
  net.run_for(10s);
  REQUIRE(c->membership().active_view().size() == 1);
  net.kill("a");
  net.heal();
  net.run_until([&] { return c->membership().is_active("b"); }, 60s);
  CHECK(c->membership().is_active("b"));
  (void)b;
}
