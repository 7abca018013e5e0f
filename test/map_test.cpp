// The replicated map: several full nodes over TCP, plus storage tests.
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <doctest/doctest.h>

#include "cluster.hpp"
#include "forwarding_transport.hpp"

#include <atomic>
#include <algorithm>
#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <set>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

task<> put(map& m, std::string k, json v) { co_await m.put(std::move(k), std::move(v)); }

bool all_equal(const std::vector<std::shared_ptr<map>>& maps) {
  for (auto& m : maps)
    if (m->to_list() != maps[0]->to_list()) return false;
  return true;
}

}  // namespace

TEST_CASE("5 nodes: puts and removes converge; remote writes raise events everywhere") {
  cluster<tcp_net> c;
  for (int i = 0; i < 5; ++i) c.add("m" + std::to_string(i));
  std::vector<std::shared_ptr<map>> maps;
  std::vector<event_stream<map_event>> streams;
  for (auto& n : c.nodes) {
    maps.push_back(map::open(*n, "kv"));
    streams.push_back(maps.back()->subscribe());
  }
  CHECK(map::open(*c.nodes[0], "kv") == maps[0]);  // idempotent
  c.run([&]() -> task<> {
    for (int i = 0; i < 10; ++i) co_await put(*maps[i % 5], "k" + std::to_string(i), i);
    co_await maps[2]->remove("k3");
    co_await maps[4]->remove("k7");
  });
  REQUIRE(c.eventually([&] { return all_equal(maps) && maps[0]->size() == 8; }));
  CHECK_FALSE(maps[1]->get("k3").has_value());
  CHECK(maps[3]->get("k9") == json(9));
  // Every node saw a put event for every live key, and consistent removes.
  for (std::size_t i = 0; i < streams.size(); ++i) {
    CAPTURE(i);
    std::set<std::string> put_keys, removed;
    while (streams[i].pending() > 0) {
      std::optional<map_event> ev;
      c.run([&]() -> task<> { ev = co_await streams[i].next(); });
      REQUIRE(ev.has_value());
      (ev->what == map_event::kind::put ? put_keys : removed).insert(ev->key);
    }
    for (const auto& k : maps[i]->keys()) CHECK(put_keys.contains(k));
    // A removed key raised put+remove, or nothing if its tombstone arrived
    // before its value (the value never became visible there).
    for (const std::string k : {"k3", "k7"}) CHECK(put_keys.contains(k) == removed.contains(k));
    CHECK(removed.size() <= 2);
  }
}

namespace {
// Reads `count` events, each compared with what the map returns for its key
// at that moment.
task<> read_and_compare(event_stream<map_event>& events, map& m, std::size_t count, std::size_t& seen,
                        std::vector<std::string>& mismatches) {
  while (seen < count) {
    auto ev = co_await events.next();
    if (!ev) break;
    ++seen;
    const auto now = m.get(ev->key);
    if (ev->what != map_event::kind::put || !now || *now != ev->value)
      mismatches.push_back(ev->key + ": read " + (now ? now->dump() : "nothing") + ", event " + ev->value.dump());
  }
}
}  // namespace

TEST_CASE("a subscriber that reads after an event sees the new value") {
  cluster<tcp_net> c;
  c.add("a");
  c.add("b");
  auto ma = map::open(*c.nodes[0], "kv");
  auto mb = map::open(*c.nodes[1], "kv");
  auto events = mb->subscribe();
  // Each key is written once, so the value a read finds must be the one the
  // event carries: a projection updated later than its event (after a
  // suspension, or not at all) or with another value fails this. The reader
  // is waiting before the first put and reads each event as it comes.
  std::vector<std::string> mismatches;
  std::size_t seen = 0;
  boost::asio::co_spawn(c.io, read_and_compare(events, *mb, 20, seen, mismatches), boost::asio::detached);
  c.run([&]() -> task<> {
    for (int i = 0; i < 20; ++i) co_await ma->put("k" + std::to_string(i), i);
  });
  REQUIRE(c.eventually([&] { return seen == 20; }));
  CHECK(mismatches == std::vector<std::string>{});
}

TEST_CASE("a map opened late populates and emits a put for every key it learns") {
  cluster<tcp_net> c;
  c.add("a");
  c.add("b");
  c.add("c");
  auto ma = map::open(*c.nodes[0], "late");
  auto mb = map::open(*c.nodes[1], "late");
  c.run([&]() -> task<> {
    for (int i = 0; i < 25; ++i) co_await put(*ma, "k" + std::to_string(i), i);
  });
  REQUIRE(c.eventually([&] { return mb->size() == 25; }));
  auto mc = map::open(*c.nodes[2], "late");
  auto events = mc->subscribe();
  REQUIRE(c.eventually([&] { return mc->size() == 25; }));
  // Events published before subscribe() cannot be seen; open + subscribe
  // happen before any network round trip, so all 25 are there.
  CHECK(events.pending() == 25);
}

TEST_CASE("validator: a rejected put throws; an invalid value from a peer is dropped and counted") {
  cluster<tcp_net> c;
  c.add("a");
  c.add("b");
  map_options strict;
  strict.validator = [](const std::string&, const json& v) { return v.is_number_integer(); };
  auto loose = map::open(*c.nodes[0], "ints");  // node a accepts anything
  auto checked = map::open(*c.nodes[1], "ints", strict);
  bool threw = false;
  c.run([&]() -> task<> {
    try {
      co_await checked->put("bad", "text");
    } catch (const map_error&) {
      threw = true;
    }
    co_await loose->put("bad", "text");  // the unvalidated node sends it anyway
    co_await loose->put("good", 7);
  });
  CHECK(threw);
  CHECK(checked->counters().rejected_local == 1);
  bool long_key_refused = false;
  c.run([&]() -> task<> {
    try {
      co_await checked->put(std::string(2000, 'k'), 1);
    } catch (const map_error&) {
      long_key_refused = true;
    }
  });
  CHECK(long_key_refused);
  REQUIRE(c.eventually([&] { return checked->get("good").has_value(); }));
  CHECK_FALSE(checked->get("bad").has_value());
  CHECK(checked->counters().rejected_remote >= 1);
}

TEST_CASE("put and remove from code on the node's executor run without a hop, with the same results") {
  cluster<tcp_net> c;
  c.add("a");
  c.add("b");
  map_options strict;
  strict.validator = [](const std::string&, const json& v) { return v.is_number_integer(); };
  auto ma = map::open(*c.nodes[0], "kv", strict);
  auto mb = map::open(*c.nodes[1], "kv");
  bool refused = false;
  bool visible_at_once = false;
  bool no_hop = false;
  bool queued_ran = false;  // outlives the body: the handler runs after it
  c.run([&]() -> task<> {
    // The body runs on node a's strand: put and remove take the inline path.
    auto on_strand = [&]() -> task<> {
      // Inline: a handler queued on the strand before the put has not run
      // when it returns (a hop would let it run; nothing here suspends).
      boost::asio::post(c.nodes[0]->get_executor(), [&queued_ran] { queued_ran = true; });
      co_await ma->put("k", 1);
      no_hop = !queued_ran;
      visible_at_once = ma->get("k") == json(1);
      co_await ma->put("gone", 2);
      co_await ma->remove("gone");
      try {
        co_await ma->put("bad", "text");
      } catch (const map_error&) {
        refused = true;
      }
    };
    co_await boost::asio::co_spawn(c.nodes[0]->get_executor(), on_strand(), boost::asio::use_awaitable);
  });
  CHECK(no_hop);
  CHECK(visible_at_once);
  CHECK(refused);
  CHECK(ma->counters().puts == 2);
  CHECK(ma->counters().removes == 1);
  CHECK(ma->counters().rejected_local == 1);
  REQUIRE(c.eventually([&] { return mb->get("k") == json(1) && mb->entry_count() == 2; }));
  CHECK_FALSE(mb->get("gone").has_value());
  CHECK_FALSE(mb->get("bad").has_value());
}

TEST_CASE("a validator may read its own map: peer data is validated before the state's lock is taken") {
  cluster<tcp_net> c;
  c.add("a");
  c.add("b");
  std::shared_ptr<map> mb;
  int reads = 0;  // the validator runs on b's strand, as c.run does
  map_options reading;
  reading.validator = [&](const std::string& k, const json&) {
    if (mb) {
      (void)mb->get(k);  // refused (EDEADLK) or a deadlock if the merge held the lock
      ++reads;
    }
    return true;
  };
  auto ma = map::open(*c.nodes[0], "kv");
  mb = map::open(*c.nodes[1], "kv", reading);
  c.run([&]() -> task<> {
    co_await ma->put("k", 1);
    co_await ma->put("k", 2);
  });
  REQUIRE(c.eventually([&] { return mb->get("k") == json(2); }));
  CHECK(reads >= 1);
  CHECK(mb->size() == 1);
}

TEST_CASE("prune_on_peer_down drops a stopped node's keys; the default map keeps them") {
  cluster<tcp_net> c;
  c.add("a");
  c.add("b");
  c.add("gone");
  map_options presence;
  presence.prune_on_peer_down = true;
  auto pa = map::open(*c.nodes[0], "presence", presence);
  auto da = map::open(*c.nodes[0], "default");
  auto pg = map::open(*c.nodes[2], "presence", presence);
  auto dg = map::open(*c.nodes[2], "default");
  map::open(*c.nodes[1], "presence", presence);  // dropped at once: must be harmless
  c.run([&]() -> task<> {
    co_await pa->put("a", "here");
    co_await pg->put("gone", "here");
    co_await dg->put("gone", "here");
  });
  REQUIRE(c.eventually([&] { return pa->size() == 2 && da->size() == 1; }));
  // Node "gone" stops: its neighbours see peer_down.
  pg.reset();
  dg.reset();
  c.run([&]() -> task<> { co_await c.nodes[2]->stop(); });
  CHECK(c.eventually([&] { return !pa->get("gone").has_value(); }));
  CHECK(pa->get("a") == json("here"));
  CHECK(da->get("gone") == json("here"));
  CHECK(pa->counters().pruned >= 1);
}

TEST_CASE("the tombstone sweep removes only tombstones older than the TTL") {
  boost::asio::io_context io;
  sim_network net(io, {});
  node_config cfg;
  cfg.transport.node_id = "solo";
  cfg.log = [](const std::string&) {};
  node n(net, cfg);
  map_options o;
  o.tombstone_ttl = 60s;
  o.tombstone_sweep_interval = 5s;
  std::shared_ptr<map> m;
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await n.start();
    m = map::open(n, "ttl", o);
    co_await m->put("old", 1);
    co_await m->remove("old");
  }, boost::asio::detached);
  net.run_for(30s);
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await m->put("young", 1);
    co_await m->remove("young");
    co_await m->put("alive", 1);
  }, boost::asio::detached);
  net.run_for(20s);  // t = 50 s: nothing is older than 60 s yet
  CHECK(m->entry_count() == 3);
  net.run_for(20s);  // t = 70 s: "old" (removed at ~0 s) is past the TTL, "young" (30 s) is not
  CHECK(m->entry_count() == 2);
  CHECK(m->counters().tombstones_swept == 1);
  CHECK(m->get("alive") == json(1));
  net.run_for(40s);  // t = 110 s: "young" goes too; the live value never does
  CHECK(m->entry_count() == 1);
  CHECK(m->get("alive") == json(1));
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await m->close();
    co_await n.stop();
  }, boost::asio::detached);
  net.run_for(5s);
}

TEST_CASE("persistence: stop every node, start again, all data is back") {
  const auto root = temp_dir("persist");
  map_options durable;
  durable.persist = true;
  durable.snapshot_every = 7;  // force snapshots and log compaction along the way
  {
    cluster<tcp_net> c;
    c.add("p0", root / "p0");
    c.add("p1", root / "p1");
    auto m0 = map::open(*c.nodes[0], "kv", durable);
    auto m1 = map::open(*c.nodes[1], "kv", durable);
    c.run([&]() -> task<> {
      for (int i = 0; i < 30; ++i) co_await put(*m0, "k" + std::to_string(i), i);
      co_await m1->remove("k5");
    });
    REQUIRE(c.eventually([&] { return m0->size() == 29 && m1->size() == 29; }));
    c.run([&]() -> task<> {
      co_await m0->close();
      co_await m1->close();
    });
    c.stop_all();
  }
  // Each node comes back alone, with no peer to sync from: the data is
  // from its own disk.
  for (const std::string id : {"p0", "p1"}) {
    CAPTURE(id);
    cluster<tcp_net> c;
    c.nodes.push_back(std::make_unique<node>(c.io.get_executor(), tcp_config(id, root / id)));
    c.run([&]() -> task<> { co_await c.nodes[0]->start(); });
    auto m = map::open(*c.nodes[0], "kv", durable);
    CHECK(m->size() == 29);
    CHECK_FALSE(m->get("k5").has_value());
    CHECK(m->get("k0") == json(0));
    CHECK(m->get("k29") == json(29));
    // node::stop() closes the map; a later put is refused as closed.
    c.stop_all();
    bool refused = false;
    c.run([&]() -> task<> {
      try {
        co_await m->put("late", 1);
      } catch (const map_error&) {
        refused = true;
      }
    });
    CHECK(refused);
  }
  std::filesystem::remove_all(root);
}

TEST_CASE("reads from another thread while the owner writes") {
  // Each value is an object whose two fields go together ({"a": i, "b":
  // -i}) and is replaced whole: a read that saw half of one write and half
  // of the next, or a value freed under it, shows as a != -b (or crashes).
  // A data race that happens to read consistent bytes is for TSan to see:
  // tools/test runs this suite under it.
  cluster<tcp_net> c;
  c.add("w");
  auto m = map::open(*c.nodes[0], "kv");
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> reads{0}, torn{0};
  std::thread reader([&] {
    while (!stop) {
      auto v = m->get("k");
      auto ks = m->keys();
      if (v && !(v->is_object() && v->size() == 2 && v->value("a", 0) == -v->value("b", 1))) ++torn;
      if (ks.size() > 1) ++torn;
      ++reads;
    }
  });
  c.run([&]() -> task<> {
    for (int i = 0; i < 500; ++i) {
      json value = json::object();
      value["a"] = i;
      value["b"] = -i;
      co_await put(*m, "k", std::move(value));
    }
  });
  stop = true;
  reader.join();
  CHECK(m->get("k")->value("a", 0) == 499);
  CHECK(reads > 0);
  CHECK(torn == 0);
}

TEST_CASE("a snapshot larger than sync_chunk_bytes travels in parts and is reassembled") {
  cluster<tcp_net> c;
  const auto small_chunks = [](node_config& cfg) {
    cfg.replicas.sync_chunk_bytes = 4096;
    cfg.replicas.anti_entropy_interval = std::chrono::hours(1);  // full sync on connect only
  };
  auto& first = c.add("big0", {}, small_chunks);
  auto m0 = map::open(first, "kv");
  c.run([&]() -> task<> {
    for (int i = 0; i < 3000; ++i) co_await put(*m0, "key-" + std::to_string(i), std::string(20, 'x'));
  });
  // A node that joins now learns all 3000 keys by full sync alone.
  auto& second = c.add("big1", {}, small_chunks);
  auto m1 = map::open(second, "kv");
  REQUIRE(c.eventually([&] { return m1->size() == 3000; }));
  CHECK(all_equal({m0, m1}));
  // (One thread runs every node here, so reading the stats directly is safe.)
  CHECK(m0->replica_stats().sync_parts_sent > 10);
  CHECK(m1->replica_stats().sync_parts_received > 10);
  CHECK(m1->replica_stats().bad_messages == 0);
}

namespace {
// Adds a node whose transport is wrapped in a `Wrapper` (a
// forwarding_transport), starts it, and returns the wrapper.
template <class Wrapper>
Wrapper& add_wrapped(cluster<tcp_net>& c, const node_config& cfg) {
  Wrapper* wrapper = nullptr;
  c.nodes.push_back(std::make_unique<node>(node_network::tcp(c.io.get_executor(),
                                                             [&](std::unique_ptr<transport> inner) {
                                                               auto w = std::make_unique<Wrapper>(std::move(inner));
                                                               wrapper = w.get();
                                                               return w;
                                                             }),
                                           cfg));
  c.run([&]() -> task<> { co_await c.nodes.back()->start(); });
  REQUIRE(wrapper != nullptr);
  return *wrapper;
}

// Reports the send queue to the peers in `full` as full (the real one
// otherwise): what a peer that has stopped taking data looks like to the
// layers above, while the link itself still works.
class full_queue_transport : public forwarding_transport {
 public:
  using forwarding_transport::forwarding_transport;
  std::set<std::string> full;
  std::optional<send_queue_state> send_queue(const std::string& peer) const override {
    auto queue = forwarding_transport::send_queue(peer);
    if (queue && full.contains(peer)) queue->frames = queue->frame_limit;
    return queue;
  }
};
}  // namespace

TEST_CASE("reconciliation holds its pushes while the send queue to a peer is full, and sends them once it has room") {
  cluster<tcp_net> c;
  const auto quick_rounds = [](node_config& cfg) { cfg.replicas.anti_entropy_interval = 200ms; };
  auto cfg = tcp_config("fq0");
  quick_rounds(cfg);
  auto* gate = &add_wrapped<full_queue_transport>(c, cfg);
  auto m0 = map::open(*c.nodes[0], "kv");
  c.run([&]() -> task<> {
    for (int i = 0; i < 50; ++i) co_await put(*m0, "k" + std::to_string(i), i);
  });
  gate->full.insert("fq1");
  auto& second = c.add("fq1", {}, quick_rounds);
  auto m1 = map::open(second, "kv");
  // Several rounds find the 50 entries missing; none is pushed into the
  // full queue. (One thread runs every node: reading the stats is safe.)
  REQUIRE(c.eventually([&] { return m0->replica_stats().reconcile_push_congested >= 150; }));
  CHECK(m1->size() == 0);
  CHECK(m0->replica_stats().reconcile_items_sent == 0);
  gate->full.clear();
  REQUIRE(c.eventually([&] { return m1->size() == 50; }));
  CHECK(all_equal({m0, m1}));
}

namespace {
// The send queue to the peers in `busy` reads `busy_frames` fuller than
// it is, against a limit of `frame_limit` frames, and a replica frame
// that would go past that limit is refused (as a full queue drops it):
// a queue with little room left, deterministically.
class busy_queue_transport final : public forwarding_transport {
 public:
  using forwarding_transport::forwarding_transport;
  std::set<std::string> busy;
  std::size_t busy_frames = 40, frame_limit = 64;
  std::uint64_t refused = 0;
  std::optional<send_queue_state> send_queue(const std::string& peer) const override {
    auto queue = forwarding_transport::send_queue(peer);
    if (queue && busy.contains(peer)) {
      queue->frames += busy_frames;
      queue->frame_limit = frame_limit;
    }
    return queue;
  }
  bool send(const std::string& peer, channel ch, const message_body& body) override {
    if (ch == channel::replica && busy.contains(peer)) {
      const auto queue = send_queue(peer);
      if (queue && queue->frames >= queue->frame_limit) {
        ++refused;
        return false;
      }
    }
    return forwarding_transport::send(peer, ch, body);
  }
};
}  // namespace

TEST_CASE("reconciliation cuts a batch to the room left in the send queue: no part of it is dropped") {
  cluster<tcp_net> c;
  // 100 entries of 16 KiB in parts of 64 KiB: one batch is 25 parts, the
  // queue has 64 * 0.75 - 40 = 8 frames of room below the fill.
  const auto small_parts = [](node_config& cfg) {
    cfg.replicas.anti_entropy_interval = 200ms;
    cfg.replicas.sync_chunk_bytes = 64 * 1024;
  };
  auto cfg = tcp_config("bq0");
  small_parts(cfg);
  auto* gate = &add_wrapped<busy_queue_transport>(c, cfg);
  auto m0 = map::open(*c.nodes[0], "kv");
  const json value = std::string(16 * 1024, 'v');
  c.run([&]() -> task<> {
    for (int i = 0; i < 100; ++i) co_await put(*m0, "k" + std::to_string(i), value);
  });
  gate->busy.insert("bq1");
  auto m1 = map::open(c.add("bq1", {}, small_parts), "kv");
  // Without the cut, each round's 25-part batch loses its last parts to
  // the queue and the whole snapshot is abandoned: bq1 never fills.
  REQUIRE(c.eventually([&] { return m1->size() == 100; }));
  CHECK(all_equal({m0, m1}));
  CHECK(gate->refused == 0);
}

namespace {
// A full_queue_transport that passes send progress up only while `muted`
// is false; `progress` is the handler the layers above set.
class muted_progress_transport final : public full_queue_transport {
 public:
  using full_queue_transport::full_queue_transport;
  bool muted = false;
  std::uint64_t reported = 0;  // by the TCP transport, muted or not
  send_progress_handler progress;
  void on_send_progress(send_progress_handler h) override {
    progress = std::move(h);
    forwarding_transport::on_send_progress([this](const std::string& peer, std::size_t bytes) {
      ++reported;
      if (!muted && progress) progress(peer, bytes);
    });
  }
};
}  // namespace

TEST_CASE("backpressure: a waiting write wakes when a send queue shrinks, not by polling") {
  cluster<tcp_net> c;
  // No time-based look: a stalled peer would count as slow only after an
  // hour, and the write may wait ten minutes.
  const auto patient = [](node_config& cfg) {
    cfg.broadcast.slow_peer_after = std::chrono::hours(1);
    cfg.replicas.backpressure_max_wait = std::chrono::minutes(10);
  };
  auto cfg = tcp_config("wk0");
  patient(cfg);
  auto* gate = &add_wrapped<muted_progress_transport>(c, cfg);
  auto m0 = map::open(*c.nodes[0], "kv");
  auto m1 = map::open(c.add("wk1", {}, patient), "kv");
  REQUIRE(c.eventually([&] { return c.nodes[0]->broadcast().eager_peers().size() == 1; }));
  gate->full.insert("wk1");
  gate->muted = true;
  bool done = false;
  boost::asio::co_spawn(c.io, put(*m0, "k", 1), [&](std::exception_ptr e) {
    REQUIRE_FALSE(e);
    done = true;
  });
  c.eventually([&] { return false; }, 300ms);
  REQUIRE_FALSE(done);  // waiting for room at wk1
  // Room, but nobody says so: the write keeps waiting (a poll would see it).
  gate->full.clear();
  c.eventually([&] { return false; }, 300ms);
  CHECK_FALSE(done);
  // The queue to wk1 reports progress: the write goes at once.
  gate->muted = false;
  REQUIRE(gate->progress);
  gate->progress("wk1", 0);
  REQUIRE(c.eventually([&] { return done; }));
  CHECK(m0->replica_stats().backpressure_waits == 1);
  REQUIRE(c.eventually([&] { return m1->size() == 1; }));
  CHECK(gate->reported > 0);  // the TCP transport reports its writes
}

TEST_CASE("reconciliation pushes nothing to a peer while its last push to it is still queued") {
  cluster<tcp_net> c;
  const auto quick_rounds = [](node_config& cfg) {
    cfg.replicas.anti_entropy_interval = 200ms;
    cfg.transport.heartbeat_timeout = 10s;  // a stalled write stays a peer
  };
  // The reader has the smaller id: when both open an exchange at once,
  // its exchange goes on (the writer's openings never reach it).
  auto reader = map::open(c.add("if0", {}, quick_rounds), "kv");
  auto writer = map::open(c.add("if1", {}, quick_rounds), "kv");
  REQUIRE(c.eventually([&] { return c.nodes[1]->net().is_connected("if0"); }));
  // if0 stops reading if1: what if1 sends it stays in if1's queue (10 MiB,
  // past the socket buffers, far below the queue's fill gate).
  auto hold = c.nodes[0]->net().hold_reading("if1");
  const json value = std::string(256 * 1024, 'v');
  c.run([&]() -> task<> {
    for (int i = 0; i < 40; ++i) co_await put(*writer, "k" + std::to_string(i), value);
  });
  // if0's openings (it sends; only its reading is held) find 40 entries
  // missing every 200 ms; if1 pushes them once and then holds the rest.
  const bool held_back = c.eventually([&] { return writer->replica_stats().reconcile_push_congested >= 200; });
  const auto r = writer->replica_stats();
  MESSAGE("if1: answers ", r.reconcile_received, ", entries pushed ", r.reconcile_items_sent, ", held back ",
          r.reconcile_push_congested);
  REQUIRE(held_back);
  CHECK(r.reconcile_items_sent <= 40);
  CHECK(c.nodes[1]->net().is_connected("if0"));
  hold.reset();
  REQUIRE(c.eventually([&] { return reader->size() == 40; }));
  CHECK(all_equal({reader, writer}));
}

TEST_CASE("reconciliation builds a batch over max_snapshot_bytes again smaller; one entry too large alone is logged") {
  cluster<tcp_net> c;
  const auto small_snapshots = [](node_config& cfg) {
    cfg.replicas.anti_entropy_interval = 200ms;
    cfg.replicas.sync_chunk_bytes = 16 * 1024;
    cfg.replicas.max_snapshot_bytes = 64 * 1024;
  };
  auto m0 = map::open(c.add("ts0", {}, small_snapshots), "kv");
  c.run([&]() -> task<> {
    // 20 entries of 8 KiB: 160 KiB in all, over the limit in one batch.
    for (int i = 0; i < 20; ++i) co_await put(*m0, "k" + std::to_string(i), std::string(8 * 1024, 'v'));
    co_await put(*m0, "huge", std::string(100 * 1024, 'h'));  // over the limit alone
  });
  auto m1 = map::open(c.add("ts1", {}, small_snapshots), "kv");
  // The 20 arrive by reconciliation in smaller batches (the broadcasts
  // happened before ts1 joined); "huge" never fits a snapshot.
  REQUIRE(c.eventually([&] { return m1->size() == 20 && m0->replica_stats().snapshots_too_large > 0; }));
  CHECK_FALSE(m1->get("huge").has_value());
  CHECK(m0->replica_stats().reconcile_items_sent >= 20);
}

TEST_CASE("backpressure: a burst of puts larger than the send queue loses nothing") {
  cluster<tcp_net> c;
  const auto tiny_queues = [](node_config& cfg) {
    // Far below the burst. Relays do not overflow either: they announce
    // instead of pushing to a congested peer (plumtree congested_fill).
    cfg.transport.send_queue_limit = 64;
    cfg.replicas.anti_entropy_interval = std::chrono::hours(1);  // no repair: delivery must be direct
    // Wait as long as it takes (the default gives up after 5 s and sends
    // anyway, which a slow sanitizer build can reach).
    cfg.replicas.backpressure_max_wait = std::chrono::minutes(10);
  };
  std::vector<std::shared_ptr<map>> maps;
  for (int i = 0; i < 3; ++i) maps.push_back(map::open(c.add("bp" + std::to_string(i), {}, tiny_queues), "kv"));
  REQUIRE(c.eventually([&] {
    for (auto& n : c.nodes)
      if (n->membership().active_view().size() != 2) return false;
    return true;
  }));
  // All puts at once: they run back to back on the node's strand, faster
  // than any writer can drain a 32-message queue.
  constexpr int burst = 2000;
  int done = 0;
  for (int i = 0; i < burst; ++i)
    boost::asio::co_spawn(c.io, put(*maps[0], "k" + std::to_string(i), i), [&](std::exception_ptr e) {
      REQUIRE_FALSE(e);
      ++done;
    });
  REQUIRE(c.eventually([&] { return done == burst; }, 300s));
  REQUIRE(c.eventually([&] { return maps[1]->size() == burst && maps[2]->size() == burst; }, 300s));
  std::uint64_t drops = 0;
  for (auto& n : c.nodes) drops += n->net().counters().send_queue_drops;
  CHECK(drops == 0);
  CHECK(maps[0]->replica_stats().backpressure_waits > 0);
}

#if defined(__SANITIZE_THREAD__)
constexpr bool under_thread_sanitizer = true;
#else
constexpr bool under_thread_sanitizer = false;
#endif
#if defined(__SANITIZE_ADDRESS__)
constexpr bool under_address_sanitizer = true;
#else
constexpr bool under_address_sanitizer = false;
#endif

// Skipped under ThreadSanitizer: one thread runs the whole cluster, so
// there is nothing for it to find, and at its speed (10-20 times slower)
// the catch-up of 57 MiB after the stall did not finish within 120 s
// (each anti-entropy round pushed the missing values again before the
// last round's copies had been applied; reconciliation has read the send
// queue since, not measured under TSan). It runs in the release and the
// AddressSanitizer builds.
// Skipped under AddressSanitizer too (open, issue 14): there the nodes
// apply data about ten times more slowly than their peers push it, and
// with two test processes at once the catch-up did not finish in 120 s in
// two CI runs and two runs of 2026-12-02, even with one reconciliation
// push in flight per peer: the peers still pushed 4,300-16,600 entries
// of 64 KiB to nodes that lacked a few hundred (the copies leave the send
// queue into socket buffers and the receiver's inbox, where the rule no
// longer sees them). Alone under ASan it passes.
TEST_CASE("backpressure: a peer that stops reading does not hold up the others' writes" *
          doctest::skip(under_thread_sanitizer || under_address_sanitizer)) {
  cluster<tcp_net> c;
  const auto small_queues = [](node_config& cfg) {
    cfg.transport.send_queue_limit = 64;
    // A write that waited for the stopped peer would wait until it reads
    // again: the test would see the writers stuck.
    cfg.replicas.backpressure_max_wait = std::chrono::minutes(10);
  };
  std::vector<std::shared_ptr<map>> maps;
  for (int i = 0; i < 4; ++i) maps.push_back(map::open(c.add("sp" + std::to_string(i), {}, small_queues), "kv"));
  REQUIRE(c.eventually([&] {
    for (auto& n : c.nodes)
      if (n->membership().active_view().size() != 3) return false;
    return true;
  }));
  // sp0 stops reading everyone: its peers' sockets and then queues to it fill.
  std::vector<read_hold> holds;
  for (int i = 1; i < 4; ++i) holds.push_back(c.nodes[0]->net().hold_reading("sp" + std::to_string(i)));
  // 64 KiB values: the loopback socket buffers (a few MiB) fill quickly.
  const json value = std::string(64 * 1024, 'v');
  constexpr int puts_per_writer = 300;
  int writers_done = 0;
  auto slowest = std::chrono::steady_clock::duration::zero();
  for (int w = 1; w < 4; ++w)
    boost::asio::co_spawn(
        c.io,
        [&, w]() -> task<> {
          for (int i = 0; i < puts_per_writer; ++i) {
            const auto start = std::chrono::steady_clock::now();
            co_await put(*maps[w], "w" + std::to_string(w) + "-" + std::to_string(i), value);
            slowest = std::max(slowest, std::chrono::steady_clock::now() - start);
          }
          ++writers_done;
        },
        [](std::exception_ptr e) { REQUIRE_FALSE(e); });
  // While sp0 still reads nothing, every writer finishes.
  REQUIRE(c.eventually([&] { return writers_done == 3; }, 60s));
  MESSAGE("slowest put while sp0 was not reading: ",
          std::chrono::duration_cast<std::chrono::milliseconds>(slowest).count(), " ms");
  CHECK(slowest < 2s);  // a wait for sp0 lasts until it reads again
  // The test did what it means to: sp0 is still a peer of every writer (not
  // dropped as failed, which would let the writes go on for another
  // reason), and a queue to it is fuller than the old rule allowed.
  std::uint64_t announced = 0;
  double fullest_to_sp0 = 0;
  for (int w = 1; w < 4; ++w) {
    announced += c.nodes[w]->broadcast().counters().congested_announcements;
    CHECK(c.nodes[w]->net().is_connected("sp0"));
    if (auto q = c.nodes[w]->net().send_queue("sp0")) fullest_to_sp0 = std::max(fullest_to_sp0, q->fill());
  }
  MESSAGE("fullest queue to sp0: ", fullest_to_sp0);
  CHECK(fullest_to_sp0 > 0.5);
  CHECK(announced > 0);
  holds.clear();
  // Sizes first: all_equal copies every map (57 MiB each here), and run on
  // every poll it would starve the cluster it waits for.
  const bool converged = c.eventually(
      [&] {
        return std::all_of(maps.begin(), maps.end(), [](auto& m) { return m->size() == 3 * puts_per_writer; }) &&
               all_equal(maps);
      },
      120s);
  if (!converged)
    for (std::size_t i = 0; i < c.nodes.size(); ++i) {
      auto& n = *c.nodes[i];
      const auto& b = n.broadcast().counters();
      const auto r = maps[i]->replica_stats();
      std::string queues;
      for (const auto& p : n.net().connected_peers())
        if (auto q = n.net().send_queue(p))
          queues += " " + p + ":" + std::to_string(q->frames) + "f/" + std::to_string(q->bytes) + "B/" +
                    std::to_string(q->blocked_for.count()) + "ms";
      MESSAGE(n.self().id, " keys ", maps[i]->size(), " eager ", n.broadcast().eager_peers().size(), " missing ",
              b.missing, " grafts ", b.graft_sent, " deferred ", b.grafts_deferred, "/", b.graft_answers_deferred,
              " announced ", b.congested_announcements, " drops ", n.net().counters().send_queue_drops,
              " inbox ", r.inbox_bytes, " holds ", r.inbox_peer_holds, " ae ", r.anti_entropy_rounds, " rec ",
              r.reconcile_rounds, "/", r.reconcile_items_sent, "/", r.reconcile_push_deferred, " queues", queues);
    }
  REQUIRE(converged);
  std::uint64_t drops = 0;
  for (auto& n : c.nodes) drops += n->net().counters().send_queue_drops;
  MESSAGE("send-queue drops: ", drops);
}
