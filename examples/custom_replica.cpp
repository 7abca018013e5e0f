// A custom replica owner: a replicated high-score table.
//
// What it shows. `replica` (docs/reference/replica.md) is the engine under
// the replicated map; you use it directly when a plain last-write-wins map is
// not what you want. Here the owner keeps, per player, the MAXIMUM score
// submitted on any node, which LWW alone cannot express: two nodes writing
// "alice" at once would keep the LATER write, not the higher one. So:
//
//   * Underneath is an ordinary LWW OR-Map, fed only through crdt_wire::ingest
//     with a leaf validator (scores must be non-negative integers, keys must
//     be "<player>@<node>"). Each node writes only its own register per player,
//     key "<player>@<node id>", and only ever raises it (a lower score is not
//     written), so every register is monotone.
//   * The table is a projection: table[player] = max over the live registers
//     "<player>@*". Max of monotone registers is what every node converges to,
//     whatever order deltas arrive in.
//   * Resetting a player removes (tombstones) every register of that player
//     the resetting node has seen.
//   * An "announcement" (a message of the day) travels with broadcast_custom
//     and merge_custom; the newest by (HLC, node id) wins. It is not part of
//     the OR-Map, so the owner puts it in its full-sync snapshot itself: the
//     snapshot is {"scores": <OR-Map wire form>, "announcement": {...}}, a
//     tailored full sync. Because the snapshot is the WHOLE state and removals
//     are tombstones, the owner opts in to anti-entropy.
//   * Peer input is validated: a forged delta with a negative score, published
//     straight onto the broadcast bus, is rejected by every receiver.
//
// Three nodes run in this one process, each a full stack over TCP on
// 127.0.0.1 (a barrel_p2p::node from node.hpp: scheduler, TCP transport,
// HyParView, Plumtree, HLC, replica host) plus the owner. They write from different nodes, poll until all three owners
// agree, print the table, and stop everything. Exit status 0 when every step
// converged, 1 otherwise.
//
// Build and run: `ninja -C build examples/custom-replica &&
// ./build/examples/custom-replica`, or `meson test -C build
// example_custom_replica -v`.
//
// Coroutine rules followed here (docs/how-to/contributing.md, GCC 12): no
// braced aggregate temporary is passed to a coroutine, json values are built
// in plain functions (no initializer lists inside coroutine bodies), and no
// capturing coroutine lambda is invoked on the spot.
#include <barrel_p2p/crdt_wire.hpp>
#include <barrel_p2p/hyparview.hpp>
#include <barrel_p2p/node.hpp>
#include <barrel_p2p/plumtree.hpp>
#include <barrel_p2p/replica.hpp>
#include <barrel_p2p/replica_messages.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags Asio's coroutine frame operator new/delete as mismatched once
// it inlines a lambda coroutine (GCC PR 109224, a false positive).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

// The instance name is also the Plumtree tag: unique per node.
const std::string instance_name = "highscores";

// ------------------------------------------------------------ the data model

// "<player>@<writer>" -> (player, writer); nullopt for any other shape.
std::optional<std::pair<std::string, std::string>> split_key(const std::string& key) {
  const auto at = key.rfind('@');
  if (at == std::string::npos || at == 0 || at + 1 == key.size()) return std::nullopt;
  return std::make_pair(key.substr(0, at), key.substr(at + 1));
}

// A score is a non-negative integer. A value built locally from an int64 is
// a signed json integer; after CBOR it is unsigned: accept both.
bool valid_score(const json& v) {
  if (v.is_number_unsigned()) return true;
  return v.is_number_integer() && v.get<std::int64_t>() >= 0;
}

std::uint64_t score_of(const json& v) {
  return v.is_number_unsigned() ? v.get<std::uint64_t>() : static_cast<std::uint64_t>(v.get<std::int64_t>());
}

// The leaf validator handed to crdt_wire: checked on every value entry that
// arrives from a peer (and on our own writes, which take the same path).
// Tombstones carry no value and are not passed to it.
bool valid_leaf(const std::string& key, const json& value) {
  return split_key(key).has_value() && valid_score(value);
}

struct announcement {
  std::string text;
  hlc_timestamp at;
  std::string by;

  [[nodiscard]] json to_json() const {
    json j = json::object();
    j["text"] = text;
    j["at"] = crdt_wire::encode_hlc(at);  // unsigned integers, as the wire rules require
    j["by"] = by;
    return j;
  }
  [[nodiscard]] bool newer_than(const announcement& o) const {
    return std::tie(at, by) > std::tie(o.at, o.by);
  }
};

// Validating parse of a peer-supplied announcement; never throws.
std::optional<announcement> parse_announcement(const json& p, const hlc_clock& clock) {
  if (!p.is_object()) return std::nullopt;
  const auto text = p.find("text");
  const auto by = p.find("by");
  const auto at = p.find("at");
  if (text == p.end() || by == p.end() || at == p.end() || !text->is_string() || !by->is_string())
    return std::nullopt;
  const auto& t = text->get_ref<const std::string&>();
  const auto& b = by->get_ref<const std::string&>();
  if (t.empty() || t.size() > 280 || b.empty() || b.size() > 255) return std::nullopt;
  auto ts = crdt_wire::decode_hlc(*at, clock);  // refuses bad shapes and far-future clocks
  if (!ts) return std::nullopt;
  announcement a;
  a.text = t;
  a.at = *ts;
  a.by = b;
  return a;
}

// ----------------------------------------------------------------- the owner

// Implements replica_callbacks. The overrides are thin coroutines around plain
// member functions (so no json is built inside a coroutine body). Every
// callback runs on the node's executor, one at a time per instance for the
// inbox; local writes call merge_delta / merge_custom directly.
class high_score_table final : public replica_callbacks {
 public:
  high_score_table(hlc_clock& clock, std::string self) : clock_(clock), self_(std::move(self)) {}

  // ---- replica_callbacks
  task<> merge_delta(const std::string&, const json& delta) override {
    ingest_scores(delta);
    co_return;
  }
  task<> apply_full_sync(const std::string&, const json& snapshot) override {
    apply_snapshot(snapshot);
    co_return;
  }
  task<std::optional<json>> full_sync_snapshot(const std::string&) override { co_return snapshot(); }
  // A player's best score stays when the node that recorded it leaves.
  task<> remove_node(const std::string&, const std::string&) override { co_return; }
  task<> merge_custom(const std::string&, const json& payload) override {
    merge_announcement(payload);
    co_return;
  }
  // The snapshot is the whole state and removals are tombstones: safe to re-pull.
  bool anti_entropy() const override { return true; }

  // ---- local operations (plain functions; the caller broadcasts the result)

  /// The write that records `score` for `player` in this node's register, or
  /// nullopt when it is invalid or not above what this node already holds
  /// (a register only goes up: that is what makes max converge).
  [[nodiscard]] std::optional<replica_update> score_update(const std::string& player, std::int64_t score) const {
    if (score < 0 || player.empty() || player.find('@') != std::string::npos) return std::nullopt;
    const auto key = player + "@" + self_;
    if (auto current = scores_.get(key); current && valid_score(*current) &&
                                         score_of(*current) >= static_cast<std::uint64_t>(score))
      return std::nullopt;
    replica_add add;
    add.key = key;
    add.value = score;
    return replica_update(std::move(add));
  }

  /// Removals of every live register of `player` this node knows.
  [[nodiscard]] std::vector<replica_update> reset_updates(const std::string& player) const {
    std::vector<replica_update> out;
    for (const auto& key : scores_.keys()) {
      auto parts = split_key(key);
      if (!parts || parts->first != player) continue;
      replica_remove rm;
      rm.key = key;
      out.emplace_back(std::move(rm));
    }
    return out;
  }

  /// A new announcement stamped with this node's HLC.
  [[nodiscard]] json announcement_payload(const std::string& text) {
    announcement a;
    a.text = text;
    a.at = clock_.now();
    a.by = self_;
    return a.to_json();
  }

  // ---- reads

  /// The projection: per player, the highest score of any live register.
  [[nodiscard]] std::map<std::string, std::uint64_t> table() const {
    std::map<std::string, std::uint64_t> t;
    for (const auto& [key, value] : scores_.to_list()) {
      auto parts = split_key(key);
      if (!parts || !valid_score(value)) continue;
      auto& best = t[parts->first];
      best = std::max(best, score_of(value));
    }
    return t;
  }
  [[nodiscard]] const std::optional<announcement>& latest() const { return latest_; }
  [[nodiscard]] const ormap& registers() const { return scores_; }
  [[nodiscard]] std::size_t rejected() const { return rejected_; }

 private:
  void ingest_scores(const json& incoming) {
    // Validates the wrapper and the leaf, advances the clock, merges. Never
    // throws on peer content; invalid entries are dropped one by one.
    rejected_ += crdt_wire::ingest(scores_, incoming, clock_, leaf_).why.total;
  }

  void apply_snapshot(const json& snapshot) {
    if (!snapshot.is_object()) {
      ++rejected_;
      return;
    }
    if (auto s = snapshot.find("scores"); s != snapshot.end()) ingest_scores(*s);
    if (auto a = snapshot.find("announcement"); a != snapshot.end()) merge_announcement(*a);
  }

  [[nodiscard]] std::optional<json> snapshot() const {
    if (scores_.entry_count() == 0 && !latest_) return std::nullopt;
    json s = json::object();
    s["scores"] = crdt_wire::encode_map(scores_);
    if (latest_) s["announcement"] = latest_->to_json();
    return s;
  }

  void merge_announcement(const json& payload) {
    auto a = parse_announcement(payload, clock_);
    if (!a) {
      ++rejected_;
      return;
    }
    // Absorb it, so a later local announcement is newer than every one seen.
    // (May throw hlc_offset_error if the physical clock stepped back since
    // decode_hlc; the driver counts and logs a throwing callback.)
    clock_.update(a->at);
    if (!latest_ || a->newer_than(*latest_)) latest_ = std::move(*a);
  }

  hlc_clock& clock_;
  std::string self_;
  crdt_wire::leaf_validator leaf_ = valid_leaf;
  ormap scores_;
  std::optional<announcement> latest_;
  std::size_t rejected_ = 0;
};

// ------------------------------------------------------------------ a node

// The stack is a barrel_p2p::node; the owner and its instance come on top.
// Members in construction order; destroyed in reverse, so the instance goes
// first, then the owner it refers to, then the stack the owner's clock
// belongs to.
struct example_node {
  std::unique_ptr<node> stack;
  std::unique_ptr<high_score_table> owner;
  std::shared_ptr<replica> instance;
  bool started = false;
  [[nodiscard]] const std::string& id() const { return stack->id(); }
};

using cluster = std::vector<std::unique_ptr<example_node>>;

std::unique_ptr<example_node> make_node(boost::asio::io_context& io, const std::string& id) {
  node_config c;
  c.transport.node_id = id;  // 127.0.0.1, port chosen by the OS
  c.transport.cluster_secret = "custom-replica-example";  // use a long random secret in production
  c.transport.log = [id](const std::string& line) { std::fprintf(stderr, "    [tcp %s] %s\n", id.c_str(), line.c_str()); };
  c.membership.maintenance_interval = 200ms;
  c.replicas.anti_entropy_interval = 5s;  // default 5 s; shorter here so the counters show rounds
  c.replicas.log = [](const std::string& line) { std::printf("    [replica] %s\n", line.c_str()); };
  c.log = [](const std::string&) {};  // membership and broadcast stay quiet
  auto n = std::make_unique<example_node>();
  n->stack = std::make_unique<node>(io.get_executor(), std::move(c));
  // The owner exists before its instance starts, and outlives it.
  n->owner = std::make_unique<high_score_table>(n->stack->clock(), id);
  return n;
}

// No contacts in the config: the scenario joins node2 and node3 itself.
task<> start_node(example_node& n) {
  co_await n.stack->start();
  n.instance = replica::start(n.stack->replicas(), instance_name, *n.owner);
  n.started = true;
}

// Instances first (they stop using the owner), then each node: its replica
// host, membership (leaves politely), broadcast, and transport (node::stop).
task<> stop_all(cluster& nodes) {
  for (auto& n : nodes)
    if (n->started) co_await n->instance->stop();
  for (auto& n : nodes)
    if (n->started) co_await n->stack->stop();
}

// ------------------------------------------------------- writes, as coroutines
// By-value parameters, named updates: nothing braced is passed to a coroutine.

task<bool> submit_score(example_node& n, std::string player, std::int64_t score) {
  auto update = n.owner->score_update(player, score);
  std::printf("  %s: %s scores %lld%s\n", n.id().c_str(), player.c_str(), static_cast<long long>(score),
              update ? "" : "  -> refused locally (invalid, or not above this node's own best)");
  if (!update) co_return false;
  // Applies locally (merge_delta, directly) and gossips the delta.
  co_await n.instance->broadcast_update(std::move(*update));
  co_return true;
}

task<std::size_t> reset_player(example_node& n, std::string player) {
  auto updates = n.owner->reset_updates(player);
  for (auto& u : updates) co_await n.instance->broadcast_update(std::move(u));
  std::printf("  %s: reset %s (%zu register(s) tombstoned)\n", n.id().c_str(), player.c_str(), updates.size());
  co_return updates.size();
}

task<> announce(example_node& n, std::string text) {
  json payload = n.owner->announcement_payload(text);
  std::printf("  %s: announces \"%s\"\n", n.id().c_str(), text.c_str());
  // Applies locally (merge_custom) and gossips {"k":"c","p":payload}.
  co_await n.instance->broadcast_custom(std::move(payload));
}

// A buggy or hostile writer: bypasses the owner and publishes a delta with a
// negative score straight onto the broadcast bus, in the replica's own
// payload format {"k":"d","d":delta}. Plumtree does not deliver to the
// origin; every other node's leaf validator must drop it.
void publish_forged_delta(example_node& n) {
  ormap scratch;
  json delta = crdt_wire::encode_map(scratch.add("eve@" + n.id(), -5, n.id(), n.stack->clock().now()));
  n.stack->broadcast().broadcast(instance_name, encode_delta_payload(delta));
  std::printf("  %s: publishes a forged delta {eve: -5} directly on the broadcast bus\n", n.id().c_str());
}

// ------------------------------------------------------------- observations

using score_table = std::map<std::string, std::uint64_t>;

score_table first_expected() {
  score_table t;
  t["alice"] = 120;  // node1 120 beats node2's concurrent 95: max, not last write
  t["bob"] = 150;
  t["carol"] = 300;
  t["dave"] = 42;
  t["mallory"] = 9999;
  return t;
}

score_table final_expected() {
  score_table t = first_expected();
  t["alice"] = 200;  // node2 raised its own register
  t.erase("mallory");  // reset on node3
  return t;
}

// Every node projects `expected`, holds the same registers as node1, and
// (when given) shows announcement `text`.
bool all_agree(const cluster& nodes, const score_table& expected, const std::string& text) {
  for (const auto& n : nodes) {
    if (n->owner->table() != expected) return false;
    if (n->owner->registers() != nodes.front()->owner->registers()) return false;
    if (!text.empty() && (!n->owner->latest() || n->owner->latest()->text != text)) return false;
  }
  return true;
}

bool overlay_formed(const cluster& nodes) {
  // Three nodes, symmetric views, each with a neighbour: necessarily connected.
  for (const auto& n : nodes)
    if (n->stack->membership().active_view().empty()) return false;
  return true;
}

std::string render(const score_table& t) {
  std::string s;
  for (const auto& [player, score] : t) s += player + "=" + std::to_string(score) + " ";
  return s;
}

void print_state(const cluster& nodes) {
  std::printf("\n  %-7s %-45s %s\n", "node", "high-score table (max per player)", "announcement");
  for (const auto& n : nodes) {
    const auto& a = n->owner->latest();
    const std::string ann = a ? "\"" + a->text + "\" (" + a->by + ")" : "-";
    std::printf("  %-7s %-45s %s\n", n->id().c_str(), render(n->owner->table()).c_str(), ann.c_str());
  }
  std::printf("\n  registers behind the table on %s (key = player@writer):\n", nodes.front()->id().c_str());
  for (const auto& [key, value] : nodes.front()->owner->registers().to_list())
    std::printf("    %-18s %s\n", key.c_str(), value.dump().c_str());
  std::printf("\n  %-7s %6s %6s %6s %6s %6s %6s %6s %6s %8s\n", "node", "d.sent", "d.recv", "c.sent", "c.recv",
              "s.sent", "s.recv", "pulls", "ae", "rejected");
  for (const auto& n : nodes) {
    const auto& c = n->instance->counters();
    std::printf("  %-7s %6llu %6llu %6llu %6llu %6llu %6llu %6llu %6llu %8zu\n", n->id().c_str(),
                static_cast<unsigned long long>(c.deltas_sent), static_cast<unsigned long long>(c.deltas_received),
                static_cast<unsigned long long>(c.customs_sent), static_cast<unsigned long long>(c.customs_received),
                static_cast<unsigned long long>(c.syncs_sent), static_cast<unsigned long long>(c.syncs_received),
                static_cast<unsigned long long>(c.pulls_sent),
                static_cast<unsigned long long>(c.anti_entropy_rounds), n->owner->rejected());
  }
  std::printf("\n");
}

// Polls `done` every 20 ms for up to `limit`.
task<bool> wait_for(scheduler& sched, std::function<bool()> done, std::string what, duration limit) {
  const auto start = sched.now();
  while (!done()) {
    if (sched.now() - start > limit) {
      std::printf("  FAILED: %s did not happen within %lld ms\n", what.c_str(),
                  static_cast<long long>(limit.count()));
      co_return false;
    }
    co_await sched.sleep(20ms);
  }
  std::printf("  ok: %s (%lld ms)\n", what.c_str(), static_cast<long long>((sched.now() - start).count()));
  co_return true;
}

// ------------------------------------------------------------- the scenario

constexpr duration patience = 30s;  // generous: loopback converges in well under a second

task<bool> scenario(boost::asio::io_context& io, cluster& nodes) {
  auto sched = make_real_scheduler(io.get_executor());

  std::printf("1. Three nodes on 127.0.0.1 over TCP; node2 and node3 join through node1.\n");
  for (int i = 1; i <= 3; ++i) {
    nodes.push_back(make_node(io, "node" + std::to_string(i)));
    co_await start_node(*nodes.back());
    std::printf("  %s listens on %s\n", nodes.back()->id().c_str(), nodes.back()->stack->self().address.to_string().c_str());
  }
  const peer_address contact = nodes[0]->stack->self().address;
  for (std::size_t i = 1; i < nodes.size(); ++i) co_await nodes[i]->stack->membership().join(contact);
  if (!co_await wait_for(*sched, [&] { return overlay_formed(nodes); }, "overlay formed", patience))
    co_return false;
  example_node& n1 = *nodes[0];
  example_node& n2 = *nodes[1];
  example_node& n3 = *nodes[2];

  std::printf("2. Scores submitted on different nodes, some for the same player at once.\n");
  bool ok = true;
  ok &= co_await submit_score(n1, "alice", 120);
  ok &= co_await submit_score(n2, "alice", 95);  // concurrent with node1's 120
  ok &= co_await submit_score(n1, "bob", 80);
  ok &= co_await submit_score(n2, "bob", 150);
  ok &= co_await submit_score(n2, "carol", 300);
  ok &= co_await submit_score(n3, "dave", 42);
  ok &= co_await submit_score(n1, "mallory", 5000);
  ok &= co_await submit_score(n3, "mallory", 9999);
  // Refused by the owner before anything is broadcast:
  const bool negative = co_await submit_score(n3, "eve", -5);
  const bool lower = co_await submit_score(n2, "alice", 90);  // below node2's own 95
  if (!ok || negative || lower) {
    std::printf("  FAILED: a valid write was refused or an invalid one accepted\n");
    co_return false;
  }
  const score_table expected1 = first_expected();
  if (!co_await wait_for(*sched, [&] { return all_agree(nodes, expected1, ""); },
                         "all three tables agree: " + render(expected1), patience))
    co_return false;

  std::printf("3. A forged delta with a negative score reaches the other nodes.\n");
  publish_forged_delta(n3);
  if (!co_await wait_for(*sched, [&] { return n1.owner->rejected() >= 1 && n2.owner->rejected() >= 1; },
                         "node1 and node2 rejected it (leaf validator)", patience))
    co_return false;
  if (!all_agree(nodes, expected1, "")) {
    std::printf("  FAILED: the forged entry changed a table\n");
    co_return false;
  }

  std::printf("4. node3 resets mallory, node2 raises alice, node3 posts an announcement.\n");
  if (co_await reset_player(n3, "mallory") != 2) {
    std::printf("  FAILED: node3 should have seen both of mallory's registers\n");
    co_return false;
  }
  if (!co_await submit_score(n2, "alice", 200)) co_return false;
  const std::string first_text = "Season 1 closes at midnight";
  co_await announce(n3, first_text);
  const score_table expected2 = final_expected();
  if (!co_await wait_for(*sched, [&] { return all_agree(nodes, expected2, first_text); },
                         "all three agree: " + render(expected2) + "+ announcement", patience))
    co_return false;

  std::printf("5. node2 posts a newer announcement (its clock has absorbed node3's).\n");
  const std::string second_text = "Season 1 closed: carol wins";
  co_await announce(n2, second_text);
  if (!co_await wait_for(*sched, [&] { return all_agree(nodes, expected2, second_text); },
                         "the newer announcement everywhere", patience))
    co_return false;

  print_state(nodes);
  for (const auto& n : nodes)
    if (n->instance->counters().callback_errors != 0) {
      std::printf("  FAILED: %s counted callback errors\n", n->id().c_str());
      co_return false;
    }
  co_return true;
}

// Runs the scenario, then always stops every node (co_await is not allowed in
// a catch block, hence the flag).
task<bool> run(boost::asio::io_context& io, cluster& nodes) {
  bool ok = false;
  try {
    ok = co_await scenario(io, nodes);
  } catch (const std::exception& ex) {
    std::printf("  FAILED: %s\n", ex.what());
  }
  std::printf("6. Stopping: instances, then each node (replica host, membership (leave), broadcast, transport).\n");
  co_await stop_all(nodes);
  co_return ok;
}

}  // namespace

int main() {
  boost::asio::io_context io;
  cluster nodes;
  bool ok = false;
  bool finished = false;

  // A watchdog, so a hang fails the run instead of blocking it.
  boost::asio::steady_timer watchdog(io, 100s);
  watchdog.async_wait([&](const boost::system::error_code& ec) {
    if (ec) return;  // cancelled: the run finished
    std::printf("FAILED: the example did not finish within 100 s\n");
    io.stop();
  });

  // The lambda itself is passed (not invoked): co_spawn keeps it alive.
  boost::asio::co_spawn(
      io, [&]() -> task<bool> { co_return co_await run(io, nodes); },
      [&](std::exception_ptr e, bool result) {
        finished = true;
        ok = !e && result;
        watchdog.cancel();
      });
  io.run();  // returns once every node has wound down

  nodes.clear();
  const bool success = finished && ok;
  std::printf("%s\n", success ? "custom replica example: every node agreed" : "custom replica example: FAILED");
  return success ? 0 : 1;
}
