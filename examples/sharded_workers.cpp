// Sharded work with placement and fencing tokens (docs/concepts/placement.md).
//
// Three nodes in this process, over TCP on 127.0.0.1, join the placement
// group "orders" of 12 shards. Each works on the shards it owns: here it
// records "shard S is mine" in a fenced store, standing in for a database
// all workers share, which refuses a write whose token is older than the
// last one it accepted for that shard. Then worker-3 leaves the group: its
// shards move to the other two, which write with greater tokens, and a late
// write from worker-3 with its old token is refused.
// Exit status 0 when every step converged, 1 otherwise.
//
// Build and run: `ninja -C build examples/sharded-workers &&
// ./build/examples/sharded-workers` (a test: example_sharded_workers).
#include <barrel_p2p/node.hpp>
#include <barrel_p2p/placement.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>

#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

constexpr std::uint32_t shard_count = 12;
using cluster = std::vector<std::unique_ptr<node>>;

// The guarded resource: per shard, the newest token it accepted and who
// wrote with it. Equal tokens are accepted from the same writer only (two
// nodes' clocks can issue the same timestamp).
struct fenced_store {
  struct row {
    std::uint64_t token = 0;
    std::string writer;
  };
  std::map<std::uint32_t, row> rows;
  bool write(std::uint32_t shard, std::uint64_t token, const std::string& writer) {
    auto& r = rows[shard];
    if (token < r.token || (token == r.token && writer != r.writer)) return false;
    r = {token, writer};
    return true;
  }
};

node_config config_for(const std::string& id, const cluster& nodes) {
  node_config c;
  c.transport.node_id = id;
  c.transport.cluster_secret = "sharded-workers-example";  // a long random secret in production
  if (!nodes.empty()) c.contacts.push_back(nodes.front()->self().address);
  c.log = [](const std::string&) {};
  return c;
}

task<bool> until(node& n, std::function<bool()> done, duration limit) {
  const auto end = n.sched().now() + limit;
  while (!done()) {
    if (n.sched().now() > end) co_return false;
    const bool slept = co_await n.sched().sleep(20ms);
    if (!slept) co_return false;
  }
  co_return true;
}

// One worker: takes the shards it owns at open, then follows acquisitions.
// (Shards taken while open() ran are not in the stream: read owned_shards().)
task<> work(std::shared_ptr<placement> p, std::string me, event_stream<shard_event> events, fenced_store& store) {
  for (auto s : p->owned_shards()) store.write(s, *p->fence(s), me);
  while (auto ev = co_await events.next())
    if (ev->what == shard_event::kind::acquired) {
      const bool ok = store.write(ev->shard, ev->fence, me);
      std::printf("  %s acquired shard %2u (token %llu): write %s\n", me.c_str(), ev->shard,
                  static_cast<unsigned long long>(ev->fence), ok ? "accepted" : "REFUSED");
    }
}

void print_owners(const placement& p) {
  std::printf("  owners as worker-1 sees them:");
  for (std::uint32_t s = 0; s < p.shards(); ++s) std::printf(" %u:%s", s, p.owner(s).value_or("-").c_str());
  std::printf("\n");
}

task<bool> run(cluster& nodes, fenced_store& store) {
  auto ex = co_await boost::asio::this_coro::executor;
  std::vector<std::shared_ptr<placement>> groups;
  for (const char* id : {"worker-1", "worker-2", "worker-3"}) {
    nodes.push_back(std::make_unique<node>(ex, config_for(id, nodes)));
    co_await nodes.back()->start();
  }
  placement_options options;
  options.shards = shard_count;
  for (auto& n : nodes) {
    auto p = co_await placement::open(*n, "orders", options);
    boost::asio::co_spawn(n->get_executor(), work(p, n->id(), p->subscribe(), store), boost::asio::detached);
    groups.push_back(std::move(p));
  }
  // Settled: three members everywhere and every shard owned by one of them.
  auto settled = [&](std::size_t members) {
    for (const auto& p : groups)
      if (p && p->members().size() != members) return false;
    std::size_t owned = 0;
    for (const auto& p : groups)
      if (p) owned += p->owned_shards().size();
    return owned == shard_count;
  };
  bool ok = co_await until(*nodes[0], [&] { return settled(3); }, 10s);
  print_owners(*groups[0]);

  const auto leaving = groups[2]->owned_shards();
  std::map<std::uint32_t, std::uint64_t> old_tokens;
  for (auto s : leaving) old_tokens[s] = *groups[2]->fence(s);
  std::printf("\n  worker-3 leaves the group (it owned %zu shards)\n", leaving.size());
  co_await groups[2]->close();
  groups[2].reset();
  const bool moved = co_await until(*nodes[0], [&] { return settled(2); }, 10s);
  ok = ok && moved;
  print_owners(*groups[0]);

  // A late write from worker-3, with the token of its lost ownership.
  if (!leaving.empty()) {
    const auto s = leaving.front();
    const bool stale = store.write(s, old_tokens[s], "worker-3");
    std::printf("\n  a late write from worker-3 to shard %u with its old token %llu: %s\n", s,
                static_cast<unsigned long long>(old_tokens[s]), stale ? "ACCEPTED (wrong)" : "refused");
    ok = ok && !stale;
  }
  for (auto s : leaving) ok = ok && store.rows[s].writer != "worker-3";
  std::printf("\n  stopping the nodes (the last one standing takes every shard as the others leave)\n");
  for (auto& n : nodes) co_await n->stop();
  co_return ok;
}

}  // namespace

int main() {
  boost::asio::io_context io;
  cluster nodes;
  fenced_store store;
  bool ok = false;
  boost::asio::co_spawn(io, run(nodes, store), [&](std::exception_ptr e, bool result) {
    ok = !e && result;
    io.stop();
  });
  io.run();
  std::printf("\nsharded workers: %s\n", ok ? "every step converged" : "FAILED");
  return ok ? 0 : 1;
}
