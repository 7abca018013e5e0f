// Durable reminders (docs/concepts/reminders.md).
//
// Two nodes in this process, over TCP on 127.0.0.1, each with a data
// directory (reminders are kept on disk). A one-shot reminder and a
// periodic one are scheduled on node-1; whichever node owns a reminder's
// shard fires it. Delivery is at least once, so the handler acts once per
// (reminder, due time): a redelivery of a due time it has acted on is
// skipped. Then it completes the delivery (without complete(), a delivery
// fires again after redeliver_after). The token (fence) is what a resource
// the handler writes to would check. After three runs the periodic
// reminder is cancelled.
// Exit status 0 when every step converged, 1 otherwise.
//
// Build and run: `ninja -C build examples/durable-reminders &&
// ./build/examples/durable-reminders` (a test: example_durable_reminders).
#include <barrel_p2p/node.hpp>
#include <barrel_p2p/reminders.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

using cluster = std::vector<std::unique_ptr<node>>;

node_config config_for(const std::string& id, const cluster& nodes, const std::filesystem::path& dir) {
  node_config c;
  c.transport.node_id = id;
  c.transport.cluster_secret = "durable-reminders-example";  // a long random secret in production
  c.data_dir = dir / id;
  if (!nodes.empty()) c.contacts.push_back(nodes.front()->self().address);
  c.log = [](const std::string&) {};
  return c;
}

json invoice(int id) {  // json is built outside coroutines (GCC 12)
  json p = json::object();
  p["invoice"] = id;
  return p;
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

// What the handlers have done, shared by both nodes (in a real deployment:
// the system the reminders drive, which keeps the last token per reminder).
struct ledger {
  std::set<std::pair<std::string, std::uint64_t>> acted;  // (reminder, due time)
  std::map<std::string, int> runs;
};

task<> handle(std::shared_ptr<reminders> r, std::string me, event_stream<fired_reminder> fired, ledger& done) {
  while (auto f = co_await fired.next()) {
    if (!done.acted.emplace(f->name, f->due_ms).second) {
      std::printf("  %s: '%s' due %llu again (attempt %u): already done, skipped\n", me.c_str(), f->name.c_str(),
                  static_cast<unsigned long long>(f->due_ms), f->attempt);
    } else {
      ++done.runs[f->name];
      std::printf("  %s: '%s' fired (due %llu, shard %u, token %llu): %s\n", me.c_str(), f->name.c_str(),
                  static_cast<unsigned long long>(f->due_ms), f->shard, static_cast<unsigned long long>(f->fence),
                  f->payload.dump().c_str());
    }
    co_await r->complete(*f);  // one-shot: removed; periodic: moved to its next time
  }
}

task<bool> run(cluster& nodes, const std::filesystem::path& dir, ledger& done) {
  auto ex = co_await boost::asio::this_coro::executor;
  std::vector<std::shared_ptr<reminders>> rs;
  reminder_options options;
  options.tick = 20ms;
  for (const char* id : {"node-1", "node-2"}) {
    nodes.push_back(std::make_unique<node>(ex, config_for(id, nodes, dir)));
    co_await nodes.back()->start();
    auto r = co_await reminders::open(*nodes.back(), options);
    boost::asio::co_spawn(nodes.back()->get_executor(), handle(r, nodes.back()->id(), r->subscribe(), done),
                          boost::asio::detached);
    rs.push_back(std::move(r));
  }
  node& n = *nodes[0];
  const auto now = n.clock().wall_ms();
  co_await rs[0]->schedule("send-invoice-7", now + 300, invoice(7));
  co_await rs[0]->schedule("sweep-carts", now + 100, nullptr, 200);  // every 200 ms
  std::printf("  scheduled 'send-invoice-7' in 300 ms and 'sweep-carts' every 200 ms; fired by %s and %s\n",
              rs[0]->owner_of("send-invoice-7").value_or("?").c_str(), rs[0]->owner_of("sweep-carts").value_or("?").c_str());
  const bool fired = co_await until(n, [&] { return done.runs["sweep-carts"] >= 3 && done.runs["send-invoice-7"] == 1; }, 10s);
  bool ok = fired;
  co_await rs[1]->cancel("sweep-carts");
  const bool emptied = co_await until(n, [&] { return rs[0]->list().empty() && rs[1]->list().empty(); }, 10s);
  ok = ok && emptied;
  std::printf("  cancelled 'sweep-carts'; reminders left: %zu\n", rs[0]->list().size());
  for (auto& node : nodes) co_await node->stop();
  co_return ok && done.runs["send-invoice-7"] == 1;
}

}  // namespace

int main() {
  const auto dir = std::filesystem::temp_directory_path() / ("durable-reminders-" + std::to_string(::getpid()));
  boost::asio::io_context io;
  cluster nodes;
  ledger done;
  bool ok = false;
  boost::asio::co_spawn(io, run(nodes, dir, done), [&](std::exception_ptr e, bool result) {
    ok = !e && result;
    io.stop();
  });
  io.run();
  nodes.clear();
  std::filesystem::remove_all(dir);
  std::printf("\ndurable reminders: %s\n", ok ? "every step converged" : "FAILED");
  return ok ? 0 : 1;
}
