// A member that misbehaves on purpose: each case is an attack an
// authenticated peer could mount, and what bounds it.
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/replica_messages.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

// Part 0 of `parts` of a snapshot of map "kv" (named fields: GCC 12 warns
// wrongly on the braced form, -Wrestrict).
message_body first_part(std::uint64_t id, std::uint64_t parts, std::size_t bytes) {
  replica_part p;
  p.name = "kv";
  p.id = id;
  p.index = 0;
  p.parts = parts;
  p.bytes.assign(bytes, 0xa0);
  return encode(p);
}

}  // namespace

TEST_CASE("a peer outside the active view that starts a large snapshot and hangs up leaves nothing behind") {
  boost::asio::io_context io;
  sim_network net(io, {});
  node_config cfg;
  cfg.transport.node_id = "a";
  cfg.log = [](const std::string&) {};
  node a(net, cfg);
  std::shared_ptr<map> kv;
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await a.start();
    kv = map::open(a, "kv");
  }, boost::asio::detached);
  net.run_for(1s);
  REQUIRE(kv);

  // A raw member: connected (authenticated, on TCP), never in a's active
  // view, so a never sees a peer_down for it.
  auto raw = net.add_node("raw");
  bool connected = false;
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await raw->start();
    connected = (co_await raw->connect(a.self().address)).has_value();
  }, boost::asio::detached);
  net.run_for(100ms);
  REQUIRE(connected);
  CHECK_FALSE(a.membership().is_active("raw"));

  // The first of 64 parts of a snapshot, 512 KiB; then silence, and a hang-up.
  raw->send("a", channel::replica, first_part(7, 64, 512 * 1024));
  net.run_for(100ms);
  CHECK(a.replicas().partial_snapshot_bytes() == 512 * 1024);
  raw->disconnect("a");
  net.run_for(2s);
  CHECK(a.replicas().partial_snapshot_bytes() == 0);

  // While it stays connected, a partial snapshot is kept (the rest may come).
  boost::asio::co_spawn(io, [&]() -> task<> { connected = (co_await raw->connect(a.self().address)).has_value(); },
                        boost::asio::detached);
  net.run_for(100ms);
  REQUIRE(connected);
  raw->send("a", channel::replica, first_part(8, 64, 1024));
  net.run_for(2s);
  CHECK(a.replicas().partial_snapshot_bytes() == 1024);

  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await raw->stop();
    co_await kv->close();
    co_await a.stop();
  }, boost::asio::detached);
  net.run_for(5s);
}
