// The TCP transport over real loopback sockets, every node in one process on
// one io_context. Peers that misbehave are raw Asio sockets driven by the
// frame.hpp helpers. Timeouts here only catch hangs; nothing asserts speed.
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/detail/frame.hpp>
#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/tcp_transport.hpp>

#include "raw_frames.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags Asio's class-specific coroutine frame operator new/delete as
// mismatched once it inlines a lambda coroutine (GCC PR 109224, a false
// positive).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

using namespace barrel_p2p;
using namespace std::chrono_literals;
using namespace boost::asio::experimental::awaitable_operators;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
const std::string the_secret = "loopback-test-secret";

struct received {
  std::string from;
  channel ch;
  json body;
};

// A transport and everything it reported.
struct node {
  std::unique_ptr<scheduler> sched;
  std::unique_ptr<transport> t;
  std::vector<std::pair<peer_descriptor, bool>> ups;
  std::vector<std::pair<std::string, disconnect_reason>> downs;
  std::vector<received> messages;
  std::vector<std::string> log;

  [[nodiscard]] std::size_t ups_of(const std::string& id) const {
    return static_cast<std::size_t>(std::count_if(ups.begin(), ups.end(), [&](const auto& u) {
      return u.first.id == id;
    }));
  }
  [[nodiscard]] std::size_t messages_from(const std::string& id) const {
    return static_cast<std::size_t>(std::count_if(
        messages.begin(), messages.end(), [&](const auto& m) { return m.from == id; }));
  }
  [[nodiscard]] bool logged(const std::string& needle) const {
    return std::any_of(log.begin(), log.end(),
                       [&](const auto& line) { return line.find(needle) != std::string::npos; });
  }
  [[nodiscard]] const transport_counters& counters() const { return t->counters(); }
  [[nodiscard]] const peer_address& address() const { return t->self().address; }
};

tcp_transport_config config_for(std::string id) {
  tcp_transport_config c;
  c.node_id = std::move(id);
  c.cluster_secret = the_secret;
  c.connect_timeout = 10s;
  c.handshake_timeout = 10s;
  c.heartbeat_interval = 1s;
  c.heartbeat_timeout = 60s;  // tests about heartbeats shorten it
  return c;
}

std::unique_ptr<node> make_node(const executor& ex, tcp_transport_config c) {
  auto n = std::make_unique<node>();
  auto* raw = n.get();
  n->sched = make_real_scheduler(ex);
  c.log = [raw](const std::string& line) { raw->log.push_back(line); };
  n->t = make_tcp_transport(std::move(c), *n->sched);
  n->t->on_connected([raw](const peer_descriptor& p, bool inbound) { raw->ups.emplace_back(p, inbound); });
  n->t->on_disconnected(
      [raw](const std::string& id, disconnect_reason why) { raw->downs.emplace_back(id, why); });
  for (auto ch : {channel::membership, channel::broadcast, channel::replica})
    n->t->on_message(ch, [raw, ch](const std::string& from, const byte_slice& body) {
      auto m = decode_cbor(body.bytes());
      if (!m) return false;  // not CBOR: the transport cuts the peer off
      raw->messages.push_back({from, ch, std::move(*m)});
      return true;
    });
  return n;
}

std::unique_ptr<node> make_node(const executor& ex, std::string id) {
  return make_node(ex, config_for(std::move(id)));
}

// The frame-level tests drive the transport with raw sockets that speak the
// framing directly, so they run it without TLS (the test-only mode); the
// TLS handshake itself is tested in transport_security_test.cpp.
tcp_transport_config plain_config_for(std::string id) {
  auto c = config_for(std::move(id));
  c.security = transport_security::insecure_plaintext;
  return c;
}

std::unique_ptr<node> make_plain(const executor& ex, std::string id) {
  return make_node(ex, plain_config_for(std::move(id)));
}

// Note for GCC 12: braced aggregate temporaries inside a co_await expression
// are destroyed twice; tests name them first.

// Runs a test body on a fresh io_context. The body stops its transports;
// afterwards the io_context must run out of work, which is how "stop() leaves
// no coroutine or timer behind" is checked in every test.
void run_test(std::function<task<>(executor)> body) {
  asio::io_context io;
  bool done = false;
  std::exception_ptr failure;
  asio::co_spawn(io, body(io.get_executor()), [&](std::exception_ptr e) {
    failure = e;
    done = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (!done && !io.stopped() && std::chrono::steady_clock::now() < deadline)
    io.run_one_for(100ms);
  REQUIRE_MESSAGE(done, "the test body hung");
  if (failure) std::rethrow_exception(failure);
  io.run_for(20s);
  CHECK_MESSAGE(io.stopped(), "coroutines or timers still running after stop()");
}

task<> pause(std::chrono::milliseconds d) {
  asio::steady_timer timer(co_await asio::this_coro::executor, d);
  co_await timer.async_wait(use_tuple);
}

// Polls `pred` until it holds; false after `limit` (a hang, not a speed test).
task<bool> eventually(std::function<bool()> pred, std::chrono::milliseconds limit = 20s) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) co_return false;
    timer.expires_after(2ms);
    co_await timer.async_wait(use_tuple);
  }
  co_return true;
}

// (Plain parameters: GCC 12 cannot keep an initializer_list's array in a
// coroutine frame.)
task<> stop_all(node& x, node& y) {
  co_await x.t->stop();
  co_await y.t->stop();
}

json body_of(const message_body& b) {
  std::vector<std::uint8_t> whole(b.head.begin(), b.head.end());
  whole.insert(whole.end(), b.tail.bytes().begin(), b.tail.bytes().end());
  return *decode_cbor(whole);
}

// ---------------------------------------------------------------- raw peers

task<tcp::socket> raw_connect(const peer_address& to) {
  tcp::socket s(co_await asio::this_coro::executor);
  const tcp::endpoint endpoint(asio::ip::make_address(to.host), to.port);
  co_await s.async_connect(endpoint, asio::use_awaitable);
  co_return s;
}

task<> raw_write(tcp::socket& s, std::vector<std::uint8_t> bytes) {
  co_await asio::async_write(s, asio::buffer(bytes), use_tuple);
}

task<> raw_send(tcp::socket& s, channel ch, const json& message) {
  co_await raw_write(s, encode_frame(ch, encode_cbor(message)));
}

using testing::raw_frame;

task<std::optional<raw_frame>> raw_read(tcp::socket& s) { return testing::read_raw_frame(s); }

// The handshake played by hand, one step at a time, as node `id`.
task<std::optional<hello_message>> raw_hello(tcp::socket& s, const std::string& id,
                                             const handshake_nonce& nonce) {
  const hello_message hello_out{protocol_version, {id, {"127.0.0.1", 1}}, nonce};
  co_await raw_send(s, channel::control, make_hello(hello_out));
  auto in = co_await raw_read(s);
  if (!in || in->ch != channel::control) co_return std::nullopt;
  co_return parse_hello(in->body);
}

// The whole handshake as node `id` (plaintext mode: the hello exchange).
// True when the transport answered with a well-formed hello.
task<bool> raw_handshake(tcp::socket& s, const std::string& id,
                         const handshake_nonce& nonce = random_nonce()) {
  auto peer = co_await raw_hello(s, id, nonce);
  co_return peer.has_value();
}

handshake_nonce filled_nonce(std::uint8_t byte) {
  handshake_nonce n{};
  n.fill(byte);
  return n;
}

// Reads frames until one arrives on `ch` (skipping heartbeats).
task<std::optional<json>> raw_next_message(tcp::socket& s, channel ch) {
  for (;;) {
    auto f = co_await raw_read(s);
    if (!f) co_return std::nullopt;
    if (f->ch == ch) co_return std::move(f->body);
  }
}

task<bool> read_until_closed(tcp::socket& s) {
  std::array<std::uint8_t, 4096> buf{};
  for (;;) {
    auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), use_tuple);
    if (ec) co_return true;
  }
}

// True when the transport closed the socket within `limit`.
task<bool> raw_closed_within(tcp::socket& s, std::chrono::milliseconds limit) {
  auto r = co_await (read_until_closed(s) || pause(limit));
  co_return r.index() == 0;
}

// A raw socket that has passed the handshake as `id` and that `a` counts
// as connected. (`id` by value: this coroutine outlives its caller's
// temporaries.)
task<tcp::socket> raw_member(node& a, std::string id) {
  auto raw = co_await raw_connect(a.address());
  REQUIRE(co_await raw_handshake(raw, id));
  REQUIRE(co_await eventually([&] { return a.t->is_connected(id); }));
  co_return raw;
}

task<> expect_link_works(node& a, node& b) {
  const auto before = b.messages_from(a.t->self().id);
  CHECK(a.t->send(b.t->self().id, channel::membership, encode_body({{"ping", true}})));
  CHECK(co_await eventually([&] { return b.messages_from(a.t->self().id) == before + 1; }));
}

struct bad_frame_case {
  const char* name;
  std::vector<std::uint8_t> bytes;
};

// Frames a peer may send once connected, each of which must close it. For a
// transport with max_frame_bytes = 4096.
std::vector<bad_frame_case> bad_frames_after_handshake() {
  std::vector<std::uint8_t> deep(1000, 0x81);  // nesting beyond cbor_limits
  deep.push_back(0xf6);
  return {
      {"garbage CBOR", encode_frame(channel::membership, std::vector<std::uint8_t>{0xff, 0x00, 0x13})},
      {"trailing bytes", encode_frame(channel::broadcast, std::vector<std::uint8_t>{0xa0, 0xa0})},
      {"oversized", {0x00, 0x00, 0x10, 0x00, 0x01}},  // 4 + 4096 > 4096
      {"unknown channel", encode_frame(static_cast<channel>(9), std::vector<std::uint8_t>{0xa0})},
      {"zero length", {0, 0, 0, 0}},
      {"deep nesting", encode_frame(channel::replica, deep)},
  };
}

}  // namespace

TEST_SUITE("transport") {

TEST_CASE("a bad config is refused") {
  asio::io_context io;
  auto sched = make_real_scheduler(io.get_executor());
  auto no_id = config_for("");
  CHECK_THROWS_AS((void)make_tcp_transport(no_id, *sched), std::invalid_argument);
  auto no_secret = config_for("a");
  no_secret.cluster_secret.clear();
  CHECK_THROWS_AS((void)make_tcp_transport(no_secret, *sched), std::invalid_argument);
  auto no_heartbeat = config_for("a");
  no_heartbeat.heartbeat_interval = std::chrono::milliseconds{0};
  CHECK_THROWS_AS((void)make_tcp_transport(no_heartbeat, *sched), std::invalid_argument);
  auto tiny_frames = config_for("a");
  tiny_frames.max_frame_bytes = 100;
  CHECK_THROWS_AS((void)make_tcp_transport(tiny_frames, *sched), std::invalid_argument);
  auto huge_frames = config_for("a");
  huge_frames.max_frame_bytes = std::size_t{1} << 32;  // the length field would wrap
  CHECK_THROWS_AS((void)make_tcp_transport(huge_frames, *sched), std::invalid_argument);
  CHECK_NOTHROW((void)make_tcp_transport(config_for("a"), *sched));
}

TEST_CASE("ids from peers are escaped in log lines (no forged lines)") {
  run_test([](executor ex) -> task<> {
    auto a = make_plain(ex, "a");
    co_await a->t->start();
    const std::string id = "mallory\n2026-01-01 barrel_p2p tcp a: FORGED";
    auto raw = co_await raw_member(*a, id);
    std::vector<std::uint8_t> zero_length(4, 0);  // a bad frame: a log line naming the peer
    co_await raw_write(raw, zero_length);
    CHECK(co_await raw_closed_within(raw, 20s));
    CHECK(co_await eventually([&] { return a->logged("mallory\\x0a2026"); }));
    for (const auto& line : a->log) CHECK(line.find('\n') == std::string::npos);
    co_await a->t->stop();
  });
}

TEST_CASE("three transports connect and exchange messages on two channels") {
  run_test([](executor ex) -> task<> {
    auto a = make_node(ex, "a");
    auto b = make_node(ex, "b");
    auto c = make_node(ex, "c");
    const std::array<node*, 3> all{a.get(), b.get(), c.get()};
    for (auto* n : all) {
      co_await n->t->start();
      CHECK(n->address().port != 0);  // port 0: the bound port is reported
      CHECK(n->address().host == "127.0.0.1");
    }

    auto ab = co_await a->t->connect(b->address());
    REQUIRE(ab);
    CHECK(ab->id == "b");
    CHECK(ab->address == b->address());
    auto bc = co_await b->t->connect(c->address());
    REQUIRE(bc);
    CHECK(bc->id == "c");
    auto ca = co_await c->t->connect(a->address());
    REQUIRE(ca);
    CHECK(ca->id == "a");
    CHECK(co_await eventually([&] {
      return a->ups.size() == 2 && b->ups.size() == 2 && c->ups.size() == 2;
    }));
    // Each pair once; `inbound` says who dialled.
    REQUIRE(a->ups_of("b") == 1);
    REQUIRE(a->ups_of("c") == 1);
    for (const auto& [peer, inbound] : a->ups) CHECK(inbound == (peer.id == "c"));
    CHECK(b->ups_of("a") == 1);
    CHECK(c->ups_of("b") == 1);
    auto peers = a->t->connected_peers();
    std::sort(peers.begin(), peers.end());
    CHECK(peers == std::vector<std::string>{"b", "c"});
    CHECK(a->t->is_connected("c"));

    // One body, encoded once, sent to two peers; another on a second channel.
    const auto hello = encode_body({{"kind", "hello"}, {"n", 1}});
    CHECK(a->t->send("b", channel::membership, hello));
    CHECK(a->t->send("c", channel::membership, hello));
    CHECK(b->t->send("c", channel::broadcast, encode_body({{"kind", "gossip"}, {"bytes", json::binary({1, 2, 3})}})));
    CHECK(c->t->send("a", channel::broadcast, encode_body(json::array({"x", 2.5}))));
    CHECK_FALSE(a->t->send("nobody", channel::membership, hello));

    CHECK(co_await eventually([&] {
      return b->messages.size() == 1 && c->messages.size() == 2 && a->messages.size() == 1;
    }));
    REQUIRE(b->messages.size() == 1);
    CHECK(b->messages[0].from == "a");
    CHECK(b->messages[0].ch == channel::membership);
    CHECK(b->messages[0].body == body_of(hello));
    REQUIRE(c->messages.size() == 2);
    for (const auto& m : c->messages) {
      if (m.from == "a") {
        CHECK(m.ch == channel::membership);
        CHECK(m.body["kind"] == "hello");
      } else {
        CHECK(m.from == "b");
        CHECK(m.ch == channel::broadcast);
        CHECK(m.body["bytes"] == json::binary({1, 2, 3}));
      }
    }
    REQUIRE(a->messages.size() == 1);
    CHECK(a->messages[0].from == "c");
    CHECK(a->messages[0].ch == channel::broadcast);
    CHECK(a->messages[0].body == json::array({"x", 2.5}));

    const auto& ac = a->counters();
    CHECK(ac.connections_opened == 2);
    CHECK(ac.frames_sent >= 2 + 2);     // hellos + messages
    CHECK(ac.frames_received >= 2 + 1);
    CHECK(ac.bytes_sent > 0);
    CHECK(ac.bytes_received > 0);
    CHECK(ac.bad_frames == 0);
    CHECK(ac.handshake_failures == 0);

    co_await a->t->stop();
    // Stopping reports every peer, locally; the peers see the close.
    CHECK(a->downs.size() == 2);
    for (const auto& d : a->downs) CHECK(d.second == disconnect_reason::closed_locally);
    CHECK(co_await eventually([&] { return b->downs.size() == 1 && c->downs.size() == 1; }));
    CHECK(b->downs[0].first == "a");
    CHECK(b->t->is_connected("c"));
    co_await stop_all(*b, *c);
    CHECK(b->downs.size() == 2);
    CHECK(c->downs.size() == 2);
    CHECK(a->counters().connections_closed == 2);
  });
}

TEST_CASE("a wrong cluster secret fails the handshake on both sides") {
  run_test([](executor ex) -> task<> {
    auto a = make_node(ex, "a");
    auto cfg = config_for("b");
    cfg.cluster_secret = "another-cluster-secret";
    auto b = make_node(ex, cfg);
    co_await a->t->start();
    co_await b->t->start();
    auto r = co_await a->t->connect(b->address());
    CHECK_FALSE(r);
    CHECK(co_await eventually([&] {
      return a->counters().handshake_failures == 1 && b->counters().handshake_failures == 1;
    }));
    CHECK(a->ups.empty());
    CHECK(b->ups.empty());
    CHECK(a->t->connected_peers().empty());
    // The dialler offers a key b does not have; b refuses it, a sees b's alert.
    CHECK(b->counters().handshake_failures_by_reason[static_cast<std::size_t>(handshake_failure::unknown_key)] == 1);
    CHECK(a->counters().handshake_failures_by_reason[static_cast<std::size_t>(handshake_failure::tls)] == 1);
    CHECK(b->logged("unknown_key"));
    CHECK(a->counters().connections_opened == 0);
    co_await stop_all(*a, *b);
    CHECK(a->downs.empty());
    CHECK(b->downs.empty());
  });
}

TEST_CASE("a connection to oneself is refused") {
  run_test([](executor ex) -> task<> {
    auto a = make_node(ex, "a");
    co_await a->t->start();
    CHECK_FALSE(co_await a->t->connect(a->address()));
    CHECK(co_await eventually([&] { return a->counters().handshake_failures == 2; }));  // both ends
    CHECK(a->ups.empty());
    CHECK(a->logged("self"));
    co_await a->t->stop();
  });
}

TEST_CASE("dialling a closed port fails and is counted") {
  run_test([](executor ex) -> task<> {
    std::uint16_t port = 0;
    {
      tcp::acceptor probe(ex, {asio::ip::make_address("127.0.0.1"), 0});
      port = probe.local_endpoint().port();
    }
    auto a = make_node(ex, "a");
    co_await a->t->start();
    const peer_address closed{"127.0.0.1", port};
    CHECK_FALSE(co_await a->t->connect(closed));
    CHECK(a->counters().connect_failures == 1);
    co_await a->t->stop();
  });
}

TEST_CASE("start on a port in use throws std::system_error") {
  run_test([](executor ex) -> task<> {
    auto a = make_node(ex, "a");
    co_await a->t->start();
    auto cfg = config_for("b");
    cfg.listen_port = a->address().port;
    auto b = make_node(ex, cfg);
    bool threw = false;
    try {
      co_await b->t->start();
    } catch (const std::system_error&) {
      threw = true;
    }
    CHECK(threw);
    co_await stop_all(*a, *b);
  });
}

TEST_CASE("connect reuses the connection to a node already connected") {
  run_test([](executor ex) -> task<> {
    auto a = make_node(ex, "a");
    auto b = make_node(ex, "b");
    co_await a->t->start();
    co_await b->t->start();
    // Two concurrent dials to one address share one connection.
    auto [first, second] = co_await (a->t->connect(b->address()) && a->t->connect(b->address()));
    REQUIRE(first);
    REQUIRE(second);
    CHECK(*first == *second);
    auto again = co_await a->t->connect(b->address());
    REQUIRE(again);
    CHECK(again->id == "b");
    // b dialling a back finds a already connected, by a's advertised address.
    auto back = co_await b->t->connect(a->address());
    REQUIRE(back);
    CHECK(back->id == "a");
    CHECK(a->counters().connections_opened == 1);
    CHECK(b->counters().connections_opened == 1);
    CHECK(a->ups.size() == 1);
    CHECK(b->ups.size() == 1);
    co_await stop_all(*a, *b);
  });
}

TEST_CASE("simultaneous dials leave one connection and one on_connected per side") {
  run_test([](executor ex) -> task<> {
    for (int round = 0; round < 10; ++round) {
      CAPTURE(round);
      auto a = make_node(ex, "a");
      auto b = make_node(ex, "b");
      co_await a->t->start();
      co_await b->t->start();
      auto [to_b, to_a] = co_await (a->t->connect(b->address()) && b->t->connect(a->address()));
      REQUIRE(to_b);
      REQUIRE(to_a);
      CHECK(to_b->id == "b");
      CHECK(to_a->id == "a");
      // Both handshakes completed on both sides; each closed the same loser.
      CHECK(co_await eventually([&] {
        return a->counters().connections_closed == a->counters().connections_opened - 1 &&
               b->counters().connections_closed == b->counters().connections_opened - 1;
      }));
      co_await pause(50ms);
      CHECK(a->ups.size() == 1);
      CHECK(b->ups.size() == 1);
      CHECK(a->downs.empty());
      CHECK(b->downs.empty());
      CHECK(a->t->connected_peers() == std::vector<std::string>{"b"});
      CHECK(b->t->connected_peers() == std::vector<std::string>{"a"});
      co_await expect_link_works(*a, *b);
      co_await expect_link_works(*b, *a);
      co_await stop_all(*a, *b);
      CHECK(a->downs.size() == 1);
      CHECK(a->counters().connections_closed == a->counters().connections_opened);
    }
  });
}

TEST_CASE("disconnect is closed_locally here, closed_by_peer there, and flushes first") {
  run_test([](executor ex) -> task<> {
    auto a = make_node(ex, "a");
    auto b = make_node(ex, "b");
    co_await a->t->start();
    co_await b->t->start();
    REQUIRE(co_await a->t->connect(b->address()));
    REQUIRE(co_await eventually([&] { return b->ups.size() == 1; }));

    CHECK(a->t->send("b", channel::membership, encode_body({{"last", "words"}})));
    a->t->disconnect("b");
    // Reported at once, locally.
    REQUIRE(a->downs.size() == 1);
    CHECK(a->downs[0] == std::pair<std::string, disconnect_reason>{"b", disconnect_reason::closed_locally});
    CHECK_FALSE(a->t->is_connected("b"));
    CHECK_FALSE(a->t->send("b", channel::membership, encode_body(1)));
    a->t->disconnect("b");  // no second report
    CHECK(a->downs.size() == 1);

    REQUIRE(co_await eventually([&] { return b->downs.size() == 1; }));
    CHECK(b->downs[0] == std::pair<std::string, disconnect_reason>{"a", disconnect_reason::closed_by_peer});
    // What was queued before the disconnect arrived first.
    REQUIRE(b->messages.size() == 1);
    CHECK(b->messages[0].body["last"] == "words");

    // And the pair can connect again.
    REQUIRE(co_await a->t->connect(b->address()));
    CHECK(co_await eventually([&] { return b->ups.size() == 2 && a->ups.size() == 2; }));
    co_await expect_link_works(*b, *a);
    co_await stop_all(*a, *b);
  });
}

TEST_CASE("an oversized length before the handshake closes that connection only") {
  run_test([](executor ex) -> task<> {
    auto a = make_plain(ex, "a");
    auto b = make_plain(ex, "b");
    co_await a->t->start();
    co_await b->t->start();
    REQUIRE(co_await a->t->connect(b->address()));

    auto raw = co_await raw_connect(a->address());
    co_await raw_write(raw, std::vector<std::uint8_t>(4, 0xff));  // length 4 GiB - 1
    CHECK(co_await raw_closed_within(raw, 20s));
    CHECK(a->counters().bad_frames == 1);
    CHECK(a->counters().handshake_failures == 1);
    CHECK(a->logged("oversized"));
    CHECK(a->ups.size() == 1);
    co_await expect_link_works(*a, *b);
    co_await expect_link_works(*b, *a);
    co_await stop_all(*a, *b);
  });
}

TEST_CASE("bad frames after the handshake are protocol errors for that connection only") {
  run_test([](executor ex) -> task<> {
    auto cfg = plain_config_for("a");
    cfg.max_frame_bytes = 4096;
    auto a = make_node(ex, cfg);
    auto b = make_plain(ex, "b");
    co_await a->t->start();
    co_await b->t->start();
    REQUIRE(co_await a->t->connect(b->address()));

    const auto cases = bad_frames_after_handshake();
    std::uint64_t expected_bad = 0;
    for (const auto& c : cases) {
      const std::string name = c.name;
      CAPTURE(name);
      const std::string id = std::string("mallory-") + std::to_string(expected_bad);
      auto raw = co_await raw_member(*a, id);
      co_await raw_write(raw, c.bytes);
      CHECK(co_await raw_closed_within(raw, 20s));
      ++expected_bad;
      CHECK(co_await eventually([&] { return a->downs.size() == expected_bad; }));
      CHECK(a->downs.back() == std::pair<std::string, disconnect_reason>{id, disconnect_reason::protocol_error});
      CHECK(a->counters().bad_frames == expected_bad);
      CHECK(a->t->is_connected("b"));
    }
    CHECK(a->counters().handshake_failures == 0);
    CHECK(a->messages.empty());
    co_await expect_link_works(*a, *b);
    co_await expect_link_works(*b, *a);
    co_await stop_all(*a, *b);
  });
}

TEST_CASE("garbage instead of a hello fails the handshake and counts a bad frame") {
  run_test([](executor ex) -> task<> {
    auto a = make_plain(ex, "a");
    co_await a->t->start();
    auto raw = co_await raw_connect(a->address());
    co_await raw_write(raw, encode_frame(channel::control, std::vector<std::uint8_t>(1, 0x1c)));
    CHECK(co_await raw_closed_within(raw, 20s));
    CHECK(a->counters().bad_frames == 1);
    CHECK(a->counters().handshake_failures == 1);
    // A well-formed message that is not a hello fails without a bad frame.
    auto raw2 = co_await raw_connect(a->address());
    const json not_a_hello = {{"v", 1}};
    co_await raw_send(raw2, channel::control, not_a_hello);
    CHECK(co_await raw_closed_within(raw2, 20s));
    CHECK(a->counters().handshake_failures == 2);
    CHECK(a->counters().bad_frames == 1);
    // A hello of another protocol version.
    auto raw3 = co_await raw_connect(a->address());
    const hello_message future{protocol_version + 1, {"future", {"127.0.0.1", 1}}, random_nonce()};
    co_await raw_send(raw3, channel::control, make_hello(future));
    CHECK(co_await raw_closed_within(raw3, 20s));
    CHECK(a->counters().handshake_failures == 3);
    // Three refusals of one kind within a second: one log line, three counts.
    CHECK(a->counters().handshake_failures_by_reason[static_cast<std::size_t>(handshake_failure::protocol)] == 3);
    CHECK(a->ups.empty());
    co_await a->t->stop();
  });
}

TEST_CASE("a silent socket is closed at the handshake timeout") {
  run_test([](executor ex) -> task<> {
    auto cfg = config_for("a");
    cfg.handshake_timeout = 200ms;
    auto a = make_node(ex, cfg);
    co_await a->t->start();
    auto raw = co_await raw_connect(a->address());
    CHECK(co_await raw_closed_within(raw, 20s));
    CHECK(a->counters().handshake_failures == 1);
    CHECK(a->logged("timed out"));
    CHECK(a->ups.empty());
    co_await a->t->stop();
  });
}

TEST_CASE("a connected peer that goes silent hits the heartbeat timeout") {
  run_test([](executor ex) -> task<> {
    auto cfg = plain_config_for("a");
    cfg.heartbeat_interval = 50ms;
    cfg.heartbeat_timeout = 300ms;
    auto a = make_node(ex, cfg);
    co_await a->t->start();
    auto raw = co_await raw_connect(a->address());
    REQUIRE(co_await raw_handshake(raw, "silent"));
    REQUIRE(co_await eventually([&] { return a->ups.size() == 1; }));
    // The transport pings an idle connection...
    auto ping = co_await raw_read(raw);
    REQUIRE(ping);
    CHECK(ping->ch == channel::control);
    // ...and gives up on a peer it never hears from.
    CHECK(co_await raw_closed_within(raw, 20s));
    REQUIRE(co_await eventually([&] { return a->downs.size() == 1; }));
    CHECK(a->downs[0] == std::pair<std::string, disconnect_reason>{"silent", disconnect_reason::heartbeat_timeout});
    CHECK(a->counters().heartbeat_timeouts == 1);
    co_await a->t->stop();
  });
}

TEST_CASE("heartbeats keep idle connections up") {
  run_test([](executor ex) -> task<> {
    auto cfg_a = config_for("a");
    cfg_a.heartbeat_interval = 30ms;
    cfg_a.heartbeat_timeout = 600ms;
    auto cfg_b = cfg_a;
    cfg_b.node_id = "b";
    auto a = make_node(ex, cfg_a);
    auto b = make_node(ex, cfg_b);
    co_await a->t->start();
    co_await b->t->start();
    REQUIRE(co_await a->t->connect(b->address()));
    const auto sent_after_handshake = a->counters().frames_sent;
    co_await pause(1500ms);  // several heartbeat timeouts of silence from the application
    CHECK(a->t->is_connected("b"));
    CHECK(b->t->is_connected("a"));
    CHECK(a->downs.empty());
    CHECK(b->downs.empty());
    CHECK(a->counters().heartbeat_timeouts == 0);
    CHECK(a->counters().frames_sent > sent_after_handshake);  // the heartbeats
    CHECK(b->messages.empty());  // control frames are not delivered
    co_await stop_all(*a, *b);
  });
}

TEST_CASE("a read hold stops reading a peer (TCP pushes back) without a heartbeat timeout; releasing it reads on in order") {
  run_test([](executor ex) -> task<> {
    auto cfg_a = config_for("a");
    cfg_a.heartbeat_interval = 50ms;
    cfg_a.heartbeat_timeout = 500ms;
    auto cfg_b = cfg_a;
    cfg_b.node_id = "b";
    auto a = make_node(ex, cfg_a);
    auto b = make_node(ex, cfg_b);
    co_await a->t->start();
    co_await b->t->start();
    // Held before it connects: the hold applies from its first frame.
    auto hold = a->t->hold_reading("b");
    auto second = a->t->hold_reading("b");  // holds count: both must go
    CHECK(a->counters().read_holds == 1);
    REQUIRE(co_await a->t->connect(b->address()));
    REQUIRE(co_await eventually([&] { return b->t->is_connected("a"); }));

    // 64 MiB from b: far more than the kernel's socket buffers hold.
    int sent = 0;
    for (int i = 0; i < 256; ++i) {
      if (b->t->send("a", channel::broadcast, encode_body(json{{"i", i}, {"pad", std::string(256 * 1024, 'x')}})))
        ++sent;
      if (i % 16 == 0) co_await pause(1ms);
    }
    CHECK(sent > 0);
    // Three heartbeat timeouts later: nothing read, nothing delivered, the
    // connection up on both sides (b was told: its write timeout waits six),
    // and b's data waiting in its own queue.
    co_await pause(1500ms);
    CHECK(a->messages.empty());
    CHECK(a->t->is_connected("b"));
    CHECK(b->t->is_connected("a"));
    CHECK(a->downs.empty());
    CHECK(b->downs.empty());
    CHECK(a->counters().heartbeat_timeouts == 0);
    CHECK(b->counters().heartbeat_timeouts == 0);
    CHECK(b->t->fullest_send_queue() > 0);  // TCP pushed back on b
    MESSAGE("sent ", sent, " messages of 256 KiB; b's send queue still holds ", b->t->fullest_send_queue());

    hold.reset();
    co_await pause(200ms);
    CHECK(a->messages.empty());  // one hold still there
    second.reset();
    const bool all = co_await eventually([&] { return a->messages.size() == static_cast<std::size_t>(sent); });
    INFO("delivered ", a->messages.size(), ", downs ", a->downs.size(), " ", b->downs.size(), ", b queue ",
         b->t->fullest_send_queue());
    REQUIRE(all);
    for (int i = 0; i < sent; ++i) CHECK(a->messages[static_cast<std::size_t>(i)].body["i"] == i);
    CHECK(a->downs.empty());
    CHECK(a->counters().read_holds == 1);
    co_await stop_all(*a, *b);
  });
}

// A node "a" with 300 ms heartbeat timeouts, started: the write-timeout tests.
task<std::unique_ptr<node>> quick_timeout_node(executor ex) {
  auto cfg = plain_config_for("a");
  cfg.heartbeat_interval = 30ms;
  cfg.heartbeat_timeout = 300ms;
  auto a = make_node(ex, cfg);
  co_await a->t->start();
  co_return a;
}

TEST_CASE("hold notices cannot keep a peer that never reads connected: the write timeout still closes it") {
  run_test([](executor ex) -> task<> {
    auto a = co_await quick_timeout_node(ex);
    auto raw = co_await raw_member(*a, "liar");
    // a writes far more than the buffers hold; the raw peer reads nothing
    // and says "held", then "reading again", every 100 ms.
    const auto large = encode_body(std::string(1 << 20, 'x'));
    for (int i = 0; i < 48; ++i) (void)a->t->send("liar", channel::broadcast, large);
    const auto started = std::chrono::steady_clock::now();
    bool held = true;
    while (a->downs.empty() && std::chrono::steady_clock::now() - started < 20s) {
      co_await raw_send(raw, channel::control, make_hold_notice(held));
      held = !held;
      co_await pause(100ms);
    }
    REQUIRE(a->downs.size() == 1);
    CHECK(a->downs[0].second == disconnect_reason::heartbeat_timeout);
    // At most six timeouts after the stalled write began, plus slack.
    CHECK(std::chrono::steady_clock::now() - started < 10s);
    co_await a->t->stop();
  });
}

TEST_CASE("a read hold does not keep a peer that stops reading too: the write timeout closes it") {
  run_test([](executor ex) -> task<> {
    auto a = co_await quick_timeout_node(ex);
    auto raw = co_await raw_member(*a, "sink");
    auto hold = a->t->hold_reading("sink");
    // The raw peer reads nothing (and takes no notice of the hold): a's
    // writes stall once the buffers fill.
    const auto large = encode_body(std::string(1 << 20, 'x'));
    for (int i = 0; i < 48; ++i) (void)a->t->send("sink", channel::broadcast, large);
    REQUIRE(co_await eventually([&] { return a->downs.size() == 1; }));
    CHECK(a->downs[0].second == disconnect_reason::heartbeat_timeout);
    CHECK(a->logged("has not read"));
    co_await a->t->stop();
  });
}

TEST_CASE("a full send queue drops new messages and counts them") {
  run_test([](executor ex) -> task<> {
    auto cfg = plain_config_for("a");
    cfg.send_queue_limit = 4;
    auto a = make_node(ex, cfg);
    co_await a->t->start();
    auto raw = co_await raw_member(*a, "sink");
    // The writer runs only when this coroutine yields: the queue fills.
    const auto body = encode_body(std::string(100, 'x'));
    int accepted = 0;
    for (int i = 0; i < 10; ++i) accepted += a->t->send("sink", channel::broadcast, body) ? 1 : 0;
    CHECK(accepted == 4);
    CHECK(a->counters().send_queue_drops == 6);
    // The queued four reach the peer.
    int got = 0;
    while (got < 4) {
      auto f = co_await raw_read(raw);
      REQUIRE(f);
      if (f->ch == channel::broadcast) ++got;
    }
    CHECK(got == 4);
    co_await a->t->stop();
  });
}

TEST_CASE("a send queue is bounded in bytes: large messages are dropped once the budget is used") {
  run_test([](executor ex) -> task<> {
    auto cfg = plain_config_for("a");
    cfg.max_frame_bytes = 64 * 1024;
    cfg.send_queue_bytes_limit = 64 * 1024;  // room for two 30 KB messages, not three
    auto a = make_node(ex, cfg);
    co_await a->t->start();
    auto raw = co_await raw_member(*a, "sink");
    // The writer runs only when this coroutine yields: the queue fills.
    const auto large = encode_body(std::string(30'000, 'x'));
    int accepted = 0;
    for (int i = 0; i < 5; ++i) accepted += a->t->send("sink", channel::broadcast, large) ? 1 : 0;
    CHECK(accepted == 2);
    CHECK(a->counters().send_queue_drops == 3);
    // A small message still fits in what is left.
    CHECK(a->t->send("sink", channel::broadcast, encode_body(std::string(100, 'x'))));
    int got = 0;
    while (got < 3) {
      auto f = co_await raw_read(raw);
      REQUIRE(f);
      if (f->ch == channel::broadcast) ++got;
    }
    co_await a->t->stop();
  });
}

TEST_CASE("a message over max_frame_bytes is not sent") {
  run_test([](executor ex) -> task<> {
    auto cfg = config_for("a");
    cfg.max_frame_bytes = 2048;
    auto a = make_node(ex, cfg);
    auto b = make_node(ex, "b");
    co_await a->t->start();
    co_await b->t->start();
    REQUIRE(co_await a->t->connect(b->address()));
    CHECK_FALSE(a->t->send("b", channel::replica, encode_body(std::string(4000, 'x'))));
    CHECK(a->t->send("b", channel::replica, encode_body(std::string(2000, 'x'))));
    CHECK(co_await eventually([&] { return b->messages.size() == 1; }));
    co_await stop_all(*a, *b);
  });
}

TEST_CASE("unregistered channels are dropped and throwing handlers do not close the link") {
  run_test([](executor ex) -> task<> {
    auto a = make_node(ex, "a");
    auto b = make_node(ex, "b");
    b->t->on_message(channel::replica, nullptr);
    int thrown = 0;
    b->t->on_message(channel::broadcast, [&](const std::string&, const byte_slice&) -> bool {
      ++thrown;
      throw std::runtime_error("handler bug");
    });
    co_await a->t->start();
    co_await b->t->start();
    REQUIRE(co_await a->t->connect(b->address()));
    CHECK(a->t->send("b", channel::replica, encode_body("nobody listens")));
    CHECK(a->t->send("b", channel::broadcast, encode_body("boom")));
    CHECK(a->t->send("b", channel::membership, encode_body("still here")));
    CHECK_FALSE(a->t->send("b", channel::control, encode_body("reserved")));
    REQUIRE(co_await eventually([&] { return b->messages.size() == 1; }));
    CHECK(b->messages[0].body == "still here");
    CHECK(thrown == 1);
    CHECK(b->logged("handler bug"));
    CHECK(b->counters().bad_frames == 0);
    CHECK(b->t->is_connected("a"));
    co_await stop_all(*a, *b);
  });
}

TEST_CASE("plaintext mode: a second connection from the same node, the smaller dialler nonce wins") {
  run_test([](executor ex) -> task<> {
    auto m = make_plain(ex, "m");
    co_await m->t->start();
    auto first = co_await raw_connect(m->address());
    REQUIRE(co_await raw_handshake(first, "p", filled_nonce(0xf0)));
    REQUIRE(co_await eventually([&] { return m->ups.size() == 1; }));

    // A later connection with a larger nonce loses: m closes it, not the first.
    auto loser = co_await raw_connect(m->address());
    REQUIRE(co_await raw_handshake(loser, "p", filled_nonce(0xff)));
    CHECK(co_await raw_closed_within(loser, 20s));
    loser.close();

    // One with a smaller nonce wins: the first one is half-closed instead.
    auto winner = co_await raw_connect(m->address());
    REQUIRE(co_await raw_handshake(winner, "p", filled_nonce(0x01)));
    CHECK(co_await raw_closed_within(first, 20s));
    first.close();

    CHECK(co_await eventually([&] { return m->counters().connections_closed == 2; }));
    CHECK(m->ups.size() == 1);  // the peer never went down
    CHECK(m->downs.empty());
    CHECK(m->t->send("p", channel::membership, encode_body("via the winner")));
    auto got = co_await raw_next_message(winner, channel::membership);
    REQUIRE(got);
    CHECK(*got == "via the winner");
    co_await m->t->stop();
    CHECK(m->downs.size() == 1);
  });
}

TEST_CASE("stop() ends every loop, dial and handshake, and reports every peer") {
  run_test([](executor ex) -> task<> {
    auto a = make_node(ex, "a");
    auto b = make_node(ex, "b");
    auto c = make_node(ex, "c");
    const std::array<node*, 3> all{a.get(), b.get(), c.get()};
    for (auto* n : all) co_await n->t->start();
    REQUIRE(co_await a->t->connect(b->address()));
    REQUIRE(co_await c->t->connect(a->address()));
    // A handshake that will never finish and a dial in flight.
    auto half_open = co_await raw_connect(a->address());
    bool dial_returned = false;
    asio::co_spawn(
        ex,
        [](transport& t, bool& flag) -> task<> {
          // A non-routable address: the dial waits (or fails) until stop().
          const peer_address unroutable{"10.255.255.1", 9};
          (void)co_await t.connect(unroutable);
          flag = true;
        }(*a->t, dial_returned),
        asio::detached);
    co_await pause(20ms);

    co_await a->t->stop();
    CHECK(dial_returned);
    CHECK(a->downs.size() == 2);
    for (const auto& d : a->downs) CHECK(d.second == disconnect_reason::closed_locally);
    CHECK(a->t->connected_peers().empty());
    CHECK_FALSE(a->t->send("b", channel::membership, encode_body(1)));
    CHECK_FALSE(co_await a->t->connect(b->address()));
    CHECK(co_await raw_closed_within(half_open, 20s));
    CHECK(co_await eventually([&] { return b->downs.size() == 1 && c->downs.size() == 1; }));
    co_await a->t->stop();  // twice is harmless
    CHECK(a->downs.size() == 2);
    co_await stop_all(*b, *c);
    // run_test checks that nothing is left running.
  });
}

TEST_CASE("a transport destroyed without stop() winds down") {
  asio::io_context io;
  std::size_t downs = 0;
  asio::co_spawn(io, [](std::size_t& downs) -> task<> {
    auto ex = co_await asio::this_coro::executor;
    auto a = make_node(ex, "a");
    auto b = make_node(ex, "b");
    co_await a->t->start();
    co_await b->t->start();
    REQUIRE(co_await a->t->connect(b->address()));
    a.reset();  // no stop(): handlers are silenced, sockets closed
    co_await eventually([&] { return !b->downs.empty(); });
    downs = b->downs.size();
    co_await b->t->stop();
  }(downs), asio::detached);
  io.run_for(60s);
  CHECK(io.stopped());
  CHECK(downs == 1);
}

}  // TEST_SUITE
