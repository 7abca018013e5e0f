// An authenticated member floods a node with every kind of message at full
// speed over real TCP. What must hold meanwhile: the process's memory stays
// within the budgets configured below, the honest nodes keep converging,
// and the victim's HTTP API keeps answering.
#include <barrel_p2p/detail/clock_messages.hpp>
#include <barrel_p2p/http_api.hpp>
#include <barrel_p2p/detail/hyparview_messages.hpp>
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/detail/plumtree_messages.hpp>
#include <barrel_p2p/replica_messages.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <doctest/doctest.h>

#include "cluster.hpp"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <malloc.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <functional>
#include <optional>
#include <random>
#include <unistd.h>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

// AddressSanitizer keeps freed memory in quarantine and adds shadow memory:
// resident sizes say nothing about the code's bounds there.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool rss_is_meaningful = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool rss_is_meaningful = false;
#else
constexpr bool rss_is_meaningful = true;
#endif
#else
constexpr bool rss_is_meaningful = true;
#endif

// Resident set of this process, bytes.
std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// The victim's budgets, small enough that the bound below is meaningful
// (a tweak of the fixture's config).
void bounded(node_config& c) {
  c.broadcast.cache_max_bytes = 8 << 20;
  c.broadcast.cache_max_messages = 20'000;
  c.broadcast.max_missing = 20'000;
  c.broadcast.graft_answer_bytes_per_second = 2 << 20;
  c.broadcast.graft_answer_burst_bytes = 2 << 20;
  c.replicas.inbox_limit_bytes = 8 << 20;
  c.replicas.max_snapshot_bytes = 8 << 20;
  c.replicas.anti_entropy_interval = 1s;
  c.transport.send_queue_bytes_limit = 8 << 20;
}

// GET /status over a plain socket: the status code, or 0 when no answer came.
task<int> http_status(std::uint16_t port) {
  auto ex = co_await boost::asio::this_coro::executor;
  boost::asio::ip::tcp::socket s(ex);
  auto [ec] = co_await s.async_connect({boost::asio::ip::make_address("127.0.0.1"), port}, use_tuple);
  if (ec) co_return 0;
  const std::string request = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  auto [wec, w] = co_await boost::asio::async_write(s, boost::asio::buffer(request), use_tuple);
  if (wec) co_return 0;
  boost::asio::streambuf buf;
  auto [rec, r] = co_await boost::asio::async_read_until(s, buf, "\r\n", use_tuple);
  if (rec) co_return 0;
  std::istream line(&buf);
  std::string version;
  int status = 0;
  line >> version >> status;
  co_return status;
}

peer_descriptor ghost(std::mt19937_64& rng) {
  const auto n = rng();
  return peer_descriptor{"ghost" + std::to_string(n % 100000),
                         peer_address("127.0.0.1", static_cast<std::uint16_t>(40000 + n % 20000))};
}

// One message of each kind the flood sends, by name.
struct flood_kind {
  const char* name;
  channel ch;
  std::function<message_body(std::mt19937_64&)> make;
};

std::vector<flood_kind> flood_kinds(const peer_descriptor& evil) {
  const auto payload = share_bytes(std::vector<std::uint8_t>(16 * 1024, 0x41));
  // PART first: the victim reads more slowly than small frames arrive, so a
  // kind sent late waits behind a long backlog; the parts are checked.
  return {
      {"PART (first of 64, 128 KiB)", channel::replica,
       [](std::mt19937_64& rng) {
         replica_part p;
         p.name = "kv";
         p.id = rng();
         p.index = 0;
         p.parts = 64;
         p.bytes.assign(128 * 1024, 0xa0);
         return encode(p);
       }},
      {"JOIN", channel::membership, [evil](std::mt19937_64&) { return encode(join_message{evil}); }},
      {"FORWARD_JOIN", channel::membership,
       [](std::mt19937_64& rng) { return encode(forward_join_message{ghost(rng), rng() % 7}); }},
      {"NEIGHBOR", channel::membership, [evil](std::mt19937_64&) { return encode(neighbor_message{evil, true}); }},
      {"SHUFFLE", channel::membership,
       [](std::mt19937_64& rng) {
         shuffle_message m;
         m.origin = ghost(rng);
         m.ttl = rng() % 7;
         for (int i = 0; i < 8; ++i) m.nodes.push_back(ghost(rng));
         return encode(m);
       }},
      {"GOSSIP (16 KiB, unknown tag)", channel::broadcast,
       [payload](std::mt19937_64& rng) {
         return encode_gossip(broadcast_id("evil", rng()), "no-such-tag", 0, byte_slice(payload));
       }},
      {"IHAVE (512 ids)", channel::broadcast,
       [](std::mt19937_64& rng) {
         std::vector<announcement> ids;
         for (int i = 0; i < 512; ++i) ids.push_back({broadcast_id("evil", rng()), 0});
         return encode_ihave(ids, 0, ids.size());
       }},
      {"GRAFT", channel::broadcast,
       [](std::mt19937_64& rng) { return encode_graft(broadcast_id("evil", rng()), 0); }},
      {"PULL", channel::replica, [](std::mt19937_64&) { return encode(replica_pull{"kv"}); }},
      {"CLOCK PROBE", channel::clock, [](std::mt19937_64& rng) { return encode(clock_probe{rng()}); }},
  };
}

// The attacker, in a child process so that its own send queues do not
// count in the victim's memory: joins through `port`, says so on `ready`,
// then floods each kind for 1.5 s in turn and exits.
[[noreturn]] void run_attacker(std::uint16_t port, int ready) {
  boost::asio::io_context io;
  auto cfg = tcp_config("evil");  // a member: the cluster fixture's key
  cfg.log = [](const std::string&) {};
  cfg.contacts.push_back(peer_address("127.0.0.1", port));
  node evil(io.get_executor(), cfg);
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await evil.start();
    auto sched = make_real_scheduler(io.get_executor());
    for (int i = 0; i < 5000 && !evil.net().is_connected("victim"); ++i) co_await sched->sleep(1ms);
    if (!evil.net().is_connected("victim")) ::_exit(4);
    const char byte = 1;
    if (::write(ready, &byte, 1) != 1) ::_exit(3);
    std::mt19937_64 rng(7);
    for (const auto& kind : flood_kinds(evil.self())) {
      // Cut off (a bad frame, a heartbeat missed under load): come back.
      if (!evil.net().is_connected("victim")) co_await evil.net().connect(peer_address("127.0.0.1", port));
      const auto until = sched->now() + 1500ms;
      std::size_t sent = 0, refused = 0;
      while (sched->now() < until) {
        // As fast as the attacker's own send queue takes them.
        for (int i = 0; i < 64; ++i) (evil.net().send("victim", kind.ch, kind.make(rng)) ? sent : refused)++;
        co_await sched->sleep(1ms);
      }
      // What is still queued here goes before the next kind (at most 2 s):
      // else a slow victim would see only the backlog of the first kinds.
      const auto drained_by = sched->now() + 2000ms;
      while (evil.net().fullest_send_queue() > 0 && sched->now() < drained_by) co_await sched->sleep(5ms);
      if (std::getenv("BARREL_TEST_LOG"))
        std::fprintf(stderr, "attacker: %s: %zu sent, %zu refused, left queued %zu\n", kind.name, sent, refused,
                     evil.net().fullest_send_queue());
      if (::write(ready, &byte, 1) != 1) ::_exit(3);  // this kind is done
    }
    // Stay connected, reading, until the parent has seen the flood arrive
    // and kills this process: exiting with replies unread would make the
    // kernel reset the connection, and the victim would lose what it had
    // not read yet (a slow victim is far behind: small frames pile up by
    // the hundred thousand in the socket buffers).
    for (;;) co_await sched->sleep(100ms);
  }, boost::asio::detached);
  io.run();
  ::_exit(2);
}

}  // namespace

TEST_SUITE("hostile") {

TEST_CASE("a member flooding every message type: bounded memory, the others converge, HTTP answers") {
  cluster<tcp_net> c;
  auto& io = c.io;
  auto& nodes = c.nodes;
  std::vector<std::shared_ptr<map>> maps;
  for (const char* id : {"victim", "b", "c"}) maps.push_back(map::open(c.add(id, {}, bounded), "kv"));
  http_api api(*nodes[0], {});
  run(io, [&]() -> task<> {
    co_await api.expose(maps[0]);
    co_await api.start();
  });
  // Warm up: data on every node, then the baseline.
  run(io, [&]() -> task<> {
    for (int i = 0; i < 200; ++i) co_await maps[1]->put("warm" + std::to_string(i), i);
  });
  REQUIRE(eventually(io, [&] { return maps[0]->size() == 200 && maps[2]->size() == 200; }));
  const auto rss_before = rss_bytes();

  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives a parent that failed before killing it
    // Nothing of the parent's: its sockets and its event loop's descriptors.
    ::close_range(3, static_cast<unsigned>(ready[1]) - 1, 0);
    ::close_range(static_cast<unsigned>(ready[1]) + 1, ~0U, 0);
    run_attacker(nodes[0]->self().address.port, ready[1]);
  }
  ::close(ready[1]);
  // Wait (serving the cluster meanwhile) until the attacker is connected.
  bool attacker_ready = false;
  run(io, [&]() -> task<> {
    auto ex = co_await boost::asio::this_coro::executor;
    boost::asio::posix::stream_descriptor pipe(ex, ready[0]);
    char byte = 0;
    auto [ec, n] = co_await boost::asio::async_read(pipe, boost::asio::buffer(&byte, 1), use_tuple);
    attacker_ready = !ec && n == 1;
    pipe.release();
  });
  REQUIRE(attacker_ready);
  // From now on one byte per kind the attacker has finished.
  ::fcntl(ready[0], F_SETFL, ::fcntl(ready[0], F_GETFL) | O_NONBLOCK);

  const auto frames_before = nodes[0]->net().counters().frames_received;
  const auto walks_before = nodes[0]->membership().counters().forward_joins;
  const auto gossip_before = nodes[0]->broadcast().counters().gossip_received;
  const auto parts_before = maps[0]->replica_stats().sync_parts_received;
  std::size_t peak = rss_before;
  int http_asked = 0, http_ok = 0, honest_puts = 0;
  const auto kinds = flood_kinds(peer_descriptor{});
  run(io, [&]() -> task<> {
    auto sched = make_real_scheduler(io.get_executor());
    const auto start = sched->now();
    std::size_t reported = 0;
    // The flood runs 1.5 s per kind, then at most 2 s while the attacker's
    // queue drains; sample until it is done, and a little past.
    std::size_t phases_done = 0;
    std::optional<duration> done_at;
    while (!done_at || sched->now() < *done_at + 1s) {
      if (sched->now() > start + 90s) break;
      char bytes[16];
      const auto got = ::read(ready[0], bytes, sizeof bytes);
      if (got > 0) phases_done += static_cast<std::size_t>(got);
      if (phases_done >= kinds.size() && !done_at) done_at = sched->now();
      ++http_asked;
      if (co_await http_status(api.port()) == 200) ++http_ok;
      const int k = honest_puts++;
      co_await maps[1]->put("during" + std::to_string(k), k);
      peak = std::max(peak, rss_bytes());
      while (phases_done > reported && reported < kinds.size()) {
        auto& v = *nodes[0];
        MESSAGE(std::string(kinds[reported].name), ": RSS ", rss_bytes() >> 20, " MiB, heap in use ",
                ::mallinfo2().uordblks >> 20, " MiB; victim: ",
                v.broadcast().counters().missing, " missing ids, ", v.broadcast().counters().cache_bytes >> 10,
                " KiB cached, ", maps[0]->replica_stats().inbox_bytes >> 10, " KiB in the inbox, ",
                v.replicas().partial_snapshot_bytes() >> 10, " KiB of partial snapshots, ",
                v.membership().counters().dials_refused, " dials refused, fullest send queue ",
                v.net().fullest_send_queue(), "; b: ", nodes[1]->broadcast().counters().missing, " missing, ",
                nodes[1]->broadcast().counters().cache_bytes >> 10, " KiB cached, queue ",
                nodes[1]->net().fullest_send_queue(), "; c: ", nodes[2]->broadcast().counters().missing, " missing",
                "; victim frames in ", v.net().counters().frames_received, ", read holds ", v.net().counters().read_holds,
                ", bad frames ", v.net().counters().bad_frames, ", replica bad ", maps[0]->replica_stats().bad_messages);
        ++reported;
      }
      co_await sched->sleep(250ms);
    }
  }, 120s);
  ::close(ready[0]);
  // Everything the attacker sent reaches the victim, the last kinds
  // included (up to a minute: it is far behind). A sanitizer build is too
  // slow to read the backlog in that time: not checked there.
  const auto parts_arrived =
      !rss_is_meaningful ||
      eventually(io, [&] { return maps[0]->replica_stats().sync_parts_received > parts_before; }, 60s);
  int status = 0;
  CHECK(::waitpid(child, &status, WNOHANG) == 0);  // still there: it did not fail
  ::kill(child, SIGKILL);
  ::waitpid(child, &status, 0);
  CHECK(WIFSIGNALED(status));
  MESSAGE("RSS before ", rss_before >> 20, " MiB, peak ", peak >> 20, " MiB, after ", rss_bytes() >> 20, " MiB");
  // The budgets above: the victim holds at most 8 MiB of cache, 8 in the
  // inbox, 8 of partial snapshots and 8 per send queue (b, c, the
  // attacker): 48 MiB; b and c relay what it relays, 8 of cache and 2 send
  // queues each: 48 more. Missing ids (20,000) and allocator slack on top.
  if (rss_is_meaningful) CHECK(peak - rss_before < (128u << 20));
  else MESSAGE("memory bound not checked under AddressSanitizer");
  // The flood did arrive (thresholds far below what a release build sees,
  // tens of thousands of frames: a sanitizer build runs both sides slowly;
  // one CI run under AddressSanitizer counted 87 walks in the whole phase).
  CHECK(nodes[0]->net().counters().frames_received - frames_before > 1'000);
  CHECK(nodes[0]->membership().counters().forward_joins - walks_before > 10);
  CHECK(nodes[0]->broadcast().counters().gossip_received - gossip_before > 0);
  MESSAGE("snapshot parts received by the victim: ", maps[0]->replica_stats().sync_parts_received - parts_before);
  CHECK(parts_arrived);
  CHECK(http_asked > 0);
  CHECK(http_ok == http_asked);
  // The honest writes made during the flood reach every node.
  const auto expected = 200u + static_cast<std::size_t>(honest_puts);
  CHECK(eventually(io, [&] { return maps[0]->size() == expected && maps[2]->size() == expected; }, 60s));

  run(io, [&]() -> task<> { co_await api.stop(); });
  c.stop_all();
}

}  // TEST_SUITE
