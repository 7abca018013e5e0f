// A member that misbehaves on purpose: each case is an attack an
// authenticated peer could mount, and what bounds it.
#include <barrel_p2p/hyparview.hpp>
#include <barrel_p2p/detail/hyparview_messages.hpp>
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/detail/plumtree_messages.hpp>
#include <barrel_p2p/replica_messages.hpp>
#include <barrel_p2p/sim_network.hpp>

#include "cluster.hpp"

#include <boost/asio/co_spawn.hpp>

#include <doctest/doctest.h>

#include <algorithm>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
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

// A HyParView node `a` with `honest` neighbours, on the simulated network,
// and raw members that send whatever membership messages a test wants.
struct membership_range {
  boost::asio::io_context io;
  sim_network net{io, {}};
  std::vector<std::unique_ptr<scheduler>> scheds;
  std::vector<std::unique_ptr<transport>> transports;
  std::vector<std::unique_ptr<hyparview>> views;  // views[0] is a
  std::vector<std::unique_ptr<transport>> raws;
  std::vector<membership_event> a_events;

  membership_range(std::size_t honest, hyparview_config a_config) {
    for (std::size_t i = 0; i <= honest; ++i) {
      scheds.push_back(net.make_scheduler());
      transports.push_back(net.add_node("n" + std::to_string(i)));
      auto c = i == 0 ? a_config : hyparview_config{};
      c.seed = 100 + i;
      views.push_back(std::make_unique<hyparview>(*transports.back(), *scheds.back(), c));
      views.back()->start();
    }
    views[0]->add_listener([this](const membership_event& e) { a_events.push_back(e); });
    boost::asio::co_spawn(io, [this]() -> task<> {
      for (std::size_t i = 1; i < views.size(); ++i) co_await views[i]->join(peer_address("sim", 0));
    }, boost::asio::detached);
    net.run_for(5s);
  }

  hyparview& a() { return *views[0]; }

  // Raw members connected to a (authenticated: they are on the network),
  // all at once: a closes connections outside its views after a grace.
  std::vector<transport*> connect_raws(const std::string& prefix, std::size_t count) {
    std::vector<transport*> out;
    auto connected = std::make_shared<std::size_t>(0);
    for (std::size_t i = 0; i < count; ++i) {
      raws.push_back(net.add_node(prefix + std::to_string(i)));
      auto* t = raws.back().get();
      out.push_back(t);
      boost::asio::co_spawn(io, [this, t, connected]() -> task<> {
        co_await t->start();
        if (co_await t->connect(a().self().address)) ++*connected;
      }, boost::asio::detached);
    }
    net.run_for(100ms);
    REQUIRE(*connected == count);
    return out;
  }
  transport& raw(const std::string& id) { return *connect_raws(id, 1).front(); }

  std::size_t evictions() const {
    return static_cast<std::size_t>(std::count_if(a_events.begin(), a_events.end(), [](const membership_event& e) {
      return e.what == membership_event::kind::peer_down && e.reason == "evicted";
    }));
  }

  ~membership_range() {
    boost::asio::co_spawn(io, [this]() -> task<> {
      for (auto& r : raws) co_await r->stop();
      for (auto& v : views) co_await v->leave();
    }, boost::asio::detached);
    net.run_for(5s);
  }
};

// A raw member `id`, connected to `target` (authenticated: it is on the
// network), that sends whatever a test wants.
std::unique_ptr<transport> connected_raw(boost::asio::io_context& io, sim_network& net, const std::string& id,
                                         const peer_address& target) {
  auto raw = net.add_node(id);
  bool connected = false;
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await raw->start();
    connected = (co_await raw->connect(target)).has_value();
  }, boost::asio::detached);
  net.run_for(100ms);
  REQUIRE(connected);
  return raw;
}

// Connects `raw` to `target` again (after a hang-up, or after the target's
// membership closed the idle connection).
void reconnect(boost::asio::io_context& io, sim_network& net, transport& raw, const peer_address& target) {
  bool connected = false;
  boost::asio::co_spawn(io, [&]() -> task<> { connected = (co_await raw.connect(target)).has_value(); },
                        boost::asio::detached);
  net.run_for(100ms);
  REQUIRE(connected);
}

// One node "a" on the simulated network with the map "kv" holding `keys`
// keys k0, k1...
struct lone_map_node : cluster<sim_net> {
  node* a = nullptr;
  std::shared_ptr<map> kv;

  explicit lone_map_node(int keys = 0) : cluster(1) {
    a = &add("a");
    kv = map::open(*a, "kv");
    run([this, keys]() -> task<> {
      for (int i = 0; i < keys; ++i) co_await kv->put("k" + std::to_string(i), i);
    });
    REQUIRE(kv->size() == static_cast<std::size_t>(keys));
  }
  ~lone_map_node() {
    spawn([this]() -> task<> { co_await kv->close(); });
    net.run_for(5s);
  }
};

}  // namespace

TEST_CASE("membership abuse: high-priority NEIGHBORs cannot churn a full active view") {
  hyparview_config cfg;
  cfg.active_size = 3;
  membership_range r(5, cfg);
  REQUIRE(r.a().active_view().size() == 3);
  const auto raws = r.connect_raws("raw", 20);
  const auto before = r.evictions();
  // 20 members, each insisting (high priority), within 200 ms.
  for (auto* t : raws) {
    peer_descriptor self = t->self();
    t->send(r.a().self().id, channel::membership, encode(neighbor_message{self, true}));
    r.net.run_for(10ms);
  }
  r.net.run_for(100ms);
  // The budget: 4 at once, then 1 per second (0.3 s went by).
  CHECK(r.evictions() - before <= 5);
  CHECK(r.evictions() - before >= 4);  // the burst is honoured: honest repairs still work
  CHECK(r.a().counters().evictions_refused >= 15);
  CHECK(r.a().active_view().size() == 3);
}

TEST_CASE("membership abuse: a JOIN repeated by an active peer is not forwarded again; JOIN walks are rate-limited") {
  hyparview_config cfg;
  cfg.join_forwards_per_second = 1;
  membership_range r(3, cfg);
  auto& t = r.raw("rejoiner");
  peer_descriptor self = t.self();
  std::uint64_t walks_before = 0;
  for (std::size_t i = 1; i < r.views.size(); ++i) walks_before += r.views[i]->counters().forward_joins;
  const auto joins_before = r.a().counters().joins_received;
  for (int i = 0; i < 100; ++i) {
    t.send(r.a().self().id, channel::membership, encode(join_message{self}));
    r.net.run_for(10ms);
  }
  r.net.run_for(1s);
  CHECK(r.a().counters().joins_received - joins_before == 100);
  CHECK(r.a().counters().joins_not_forwarded >= 99);
  std::uint64_t walks = 0;
  for (std::size_t i = 1; i < r.views.size(); ++i) walks += r.views[i]->counters().forward_joins;
  // One JOIN's walks: one per active peer, each at most arwl hops.
  CHECK(walks - walks_before <= 3 * (hyparview_config{}.arwl + 1));
  // Many different joiners within a second: at most the burst is forwarded.
  const auto not_forwarded = r.a().counters().joins_not_forwarded;
  for (auto* j : r.connect_raws("joiner", 12)) {
    peer_descriptor d = j->self();
    j->send(r.a().self().id, channel::membership, encode(join_message{d}));
  }
  r.net.run_for(200ms);
  CHECK(r.a().counters().joins_not_forwarded - not_forwarded >= 12 - 5);
  CHECK(r.a().counters().joins_not_forwarded - not_forwarded <= 12 - 4);  // the burst is forwarded
}

TEST_CASE("membership abuse: FORWARD_JOINs naming made-up joiners make at most the sender's budget of dials") {
  membership_range r(5, {});  // a's active view is full: no repairs dial
  auto& t = r.raw("dialer");
  const auto& failures_before = r.transports[0]->counters().connect_failures;
  const auto before = failures_before;
  for (int i = 0; i < 100; ++i) {
    // Nobody listens at these addresses: each accepted walk end is a dial.
    peer_descriptor joiner{"ghost" + std::to_string(i), peer_address("sim", static_cast<std::uint16_t>(5000 + i))};
    t.send(r.a().self().id, channel::membership, encode(forward_join_message{joiner, 0}));
  }
  r.net.run_for(3s);
  const auto dials = r.transports[0]->counters().connect_failures - before;
  MESSAGE("dials made for 100 forged walk ends: ", dials);
  CHECK(dials <= 8 + 2 * 3);  // burst 8, then 2 per second
  CHECK(dials >= 8);
  CHECK(r.a().counters().dials_refused >= 100 - 14);
}

TEST_CASE("a peer outside the active view that starts a large snapshot and hangs up leaves nothing behind") {
  lone_map_node c;
  auto& io = c.io;
  auto& net = c.net;
  node& a = *c.a;

  // A raw member: connected (authenticated, on TCP), never in a's active
  // view, so a never sees a peer_down for it.
  auto raw = connected_raw(io, net, "raw", a.self().address);
  CHECK_FALSE(a.membership().is_active("raw"));

  // The first of 64 parts of a snapshot, 512 KiB; then silence, and a hang-up.
  raw->send("a", channel::replica, first_part(7, 64, 512 * 1024));
  net.run_for(100ms);
  CHECK(a.replicas().partial_snapshot_bytes() == 512 * 1024);
  raw->disconnect("a");
  net.run_for(2s);
  CHECK(a.replicas().partial_snapshot_bytes() == 0);

  // While it stays connected, a partial snapshot is kept (the rest may come).
  reconnect(io, net, *raw, a.self().address);
  raw->send("a", channel::replica, first_part(8, 64, 1024));
  net.run_for(2s);
  CHECK(a.replicas().partial_snapshot_bytes() == 1024);
  boost::asio::co_spawn(io, raw->stop(), boost::asio::detached);
  net.run_for(1s);  // before raw goes
}

// An owner that takes 20 ms (virtual) to merge each delta, as a slow disk
// or a heavy validator would: deltas that arrive faster queue up.
struct slow_owner : replica_callbacks {
  scheduler& sched;
  std::shared_ptr<replica> rep;
  std::size_t merged = 0;
  std::uint64_t most_queued = 0;
  std::vector<std::string> keys;  // in merge order
  explicit slow_owner(scheduler& s) : sched(s) {}
  task<> merge_delta(const std::string&, const json& delta) override {
    most_queued = std::max(most_queued, rep->counters().inbox_bytes);
    for (const auto& [k, v] : delta.items()) keys.push_back(k);
    co_await sched.sleep(20ms);
    ++merged;
  }
  task<> apply_full_sync(const std::string&, const json&) override { co_return; }
  task<std::optional<json>> full_sync_snapshot(const std::string&) override { co_return std::nullopt; }
  task<> remove_node(const std::string&, const std::string&) override { co_return; }
};

// Node "a" on the simulated network running replica "kv" for a
// slow_owner, with raw members that gossip deltas straight at it.
struct slow_replica_node : cluster<sim_net> {
  node& a;
  slow_owner owner;
  std::vector<std::unique_ptr<transport>> raws;
  std::uint64_t wall = 0;

  explicit slow_replica_node(const replica_config& replicas)
      : cluster(1), a(add("a", [&](node_config& c) { c.replicas = replicas; })), owner(a.sched()) {
    run([this]() -> task<> {
      owner.rep = replica::start(a.replicas(), "kv", owner);
      co_return;
    });
    REQUIRE(owner.rep);
    wall = a.sched().wall_ms();
  }
  transport& raw(const std::string& id) {
    raws.push_back(connected_raw(io, net, id, a.self().address));
    return *raws.back();
  }
  // `from` gossips its broadcast number `seq`: `key` = `value`, written by it.
  void gossip(transport& from, std::uint32_t seq, const std::string& key, const std::string& value) {
    const auto& origin = from.self().id;
    const entry e = value_entry{value, {origin, {wall, seq}}};
    const auto payload = encode_delta_payload(key, e);
    from.send("a", channel::broadcast, encode_gossip(broadcast_id(origin, seq), "kv", 0, byte_slice(payload)));
  }
  ~slow_replica_node() {
    spawn([this]() -> task<> {
      for (auto& r : raws) co_await r->stop();
      co_await owner.rep->stop();
    });
    net.run_for(5s);
  }
};

TEST_CASE("a peer that sends deltas faster than they merge fills the inbox only up to inbox_limit_bytes") {
  replica_config rc;
  rc.inbox_limit_bytes = 4 << 20;
  slow_replica_node n(rc);
  auto& raw = n.raw("raw");
  // 64 deltas of 512 KiB, one per millisecond: 32 MiB against a 4 MiB inbox.
  const std::string big(512 * 1024, 'x');
  for (std::uint32_t i = 0; i < 64; ++i) {
    n.gossip(raw, i + 1, "k" + std::to_string(i), big);
    n.net.run_for(1ms);
  }
  n.net.run_for(5s);
  const auto& owner = n.owner;
  const auto& stats = owner.rep->counters();
  MESSAGE("deltas merged: ", owner.merged, ", dropped: ", stats.inbox_drops, ", most bytes queued: ", owner.most_queued);
  CHECK(stats.inbox_drops > 0);
  CHECK(owner.merged + stats.inbox_drops == 64);
  CHECK(owner.most_queued <= (4u << 20));
  CHECK(owner.most_queued > (2u << 20));  // the test did fill it
  CHECK(stats.inbox_bytes == 0);
}

TEST_CASE("a neighbour whose deltas queue past inbox_peer_limit_bytes is held, not dropped; another's still get in") {
  replica_config rc;
  rc.inbox_limit_bytes = 8 << 20;
  rc.inbox_peer_limit_bytes = 2 << 20;
  slow_replica_node n(rc);
  auto& flooder = n.raw("flooder");
  auto& honest = n.raw("honest");
  // The flooder: 64 deltas of 512 KiB, one per millisecond (32 MiB, four
  // times the whole inbox). The honest peer: one small delta every 10 ms.
  const std::string big(512 * 1024, 'x');
  std::uint32_t honest_seq = 0;
  for (std::uint32_t i = 0; i < 64; ++i) {
    n.gossip(flooder, i + 1, "f" + std::to_string(i), big);
    if (i % 10 == 0) {
      ++honest_seq;
      n.gossip(honest, honest_seq, "h" + std::to_string(honest_seq), "small");
    }
    n.net.run_for(1ms);
  }
  n.net.run_for(10s);
  const auto& owner = n.owner;
  const auto& stats = owner.rep->counters();
  MESSAGE("merged ", owner.merged, ", dropped ", stats.inbox_drops, ", most bytes queued ", owner.most_queued,
          ", holds ", stats.inbox_peer_holds);
  CHECK(stats.inbox_drops == 0);                       // nothing lost: the flooder waited instead
  // The honest deltas got in while the flooder was held: each merged
  // before the flooder's last (it would come after all of them if the
  // honest peer waited behind the flood).
  const auto position = [&](const std::string& k) {
    return static_cast<std::size_t>(std::find(owner.keys.begin(), owner.keys.end(), k) - owner.keys.begin());
  };
  for (std::uint32_t h = 1; h <= honest_seq; ++h) CHECK(position("h" + std::to_string(h)) < position("f63"));
  CHECK(owner.merged == 64 + honest_seq);              // every delta of both peers merged
  CHECK(stats.inbox_peer_holds > 0);
  CHECK(n.a.net().counters().read_holds > 0);
  // At most the budget, plus the frame that crossed it, plus the honest deltas.
  CHECK(owner.most_queued <= (2u << 20) + 512 * 1024 + 64 * 1024);
  CHECK(stats.inbox_bytes == 0);
}

// A member that claims, again and again, to hold nothing: every opening with
// an empty list would make the victim push its whole map. The push budget
// gives it one whole state per reconcile_push_window and no more.
TEST_CASE("a member asking for everything again and again gets one whole state per window") {
  lone_map_node c(5000);
  auto& io = c.io;
  auto& net = c.net;
  auto* a = c.a;
  auto& kv = c.kv;

  auto raw = connected_raw(io, net, "raw", a->self().address);
  range_sync_message empty;  // "I hold nothing at all"
  empty.ranges.resize(1);
  empty.ranges[0].what = sync_range::mode::list;
  empty.opening = true;
  replica_reconcile ask{"kv", empty};
  for (int round = 0; round < 20; ++round) {
    raw->send("a", channel::replica, encode(ask));
    net.run_for(100ms);
  }
  net.run_for(1s);
  const auto st = kv->replica_stats();
  // 2 s of virtual time: the first whole state, then 2/60 of one.
  CHECK(st.reconcile_items_sent >= 5000);
  CHECK(st.reconcile_items_sent <= 5000 + 5000 * 3 / 60);
  CHECK(st.reconcile_push_deferred >= 19 * 5000 - 5000 * 3 / 60);

  // The window refills it: a minute later the same request is served again
  // (on a new connection: a's membership closed the idle one meanwhile).
  net.run_for(60s);
  reconnect(io, net, *raw, a->self().address);
  const auto before = kv->replica_stats().reconcile_items_sent;
  raw->send("a", channel::replica, encode(ask));
  net.run_for(1s);
  CHECK(kv->replica_stats().reconcile_items_sent - before == 5000);
  boost::asio::co_spawn(io, raw->stop(), boost::asio::detached);
  net.run_for(1s);  // before raw goes
}

// Openings for instances not started here are kept to be answered at their
// start. A member naming instance after instance keeps at most 8, and they
// go when it disconnects.
TEST_CASE("openings for instances that do not exist here are kept within bounds, and dropped with their sender") {
  lone_map_node c;
  auto& io = c.io;
  auto& net = c.net;
  auto* a = c.a;
  auto raw = connected_raw(io, net, "raw", a->self().address);
  range_sync_message opening;
  opening.ranges.resize(1);
  opening.ranges[0].what = sync_range::mode::list;
  opening.opening = true;
  // A list longer than an opening ever has is not kept at all.
  auto long_list = opening;
  for (std::uint64_t i = 0; i < 100; ++i) long_list.ranges[0].items.push_back(sync_item{i + 1, i});
  replica_reconcile long_one{"long", long_list};
  raw->send("a", channel::replica, encode(long_one));
  net.run_for(100ms);
  CHECK(a->replicas().kept_openings() == 0);
  for (int i = 0; i < 40; ++i) {
    replica_reconcile m{"not-here-" + std::to_string(i), opening};
    raw->send("a", channel::replica, encode(m));
  }
  net.run_for(500ms);
  CHECK(a->replicas().kept_openings() == 8);
  raw->disconnect("a");
  net.run_for(2s);
  CHECK(a->replicas().kept_openings() == 0);
  boost::asio::co_spawn(io, raw->stop(), boost::asio::detached);
  net.run_for(1s);  // before raw goes
}

TEST_CASE("a membership message of a bad shape is counted and dropped, the link kept; bytes that are no CBOR are refused as a bad frame (TCP then closes the link)") {
  lone_map_node c;
  auto& a = *c.a;
  auto raw = connected_raw(c.io, c.net, "raw", a.self().address);
  const auto bad_before = a.membership().counters().bad_messages;
  raw->send("a", channel::membership, encode_body(json{{"t", "neighbor_reply"}, {"ok", 1}}));  // ok not a boolean
  c.net.run_for(100ms);
  CHECK(a.membership().counters().bad_messages == bad_before + 1);
  CHECK(raw->is_connected("a"));
  const auto frames_before = a.net().counters().bad_frames;
  const std::vector<std::uint8_t> not_cbor{0xff, 0x00};
  raw->send("a", channel::membership, message_body(share_bytes(not_cbor)));
  c.net.run_for(100ms);
  CHECK(a.net().counters().bad_frames == frames_before + 1);
}
