// Service discovery with the registry (docs/concepts/registry.md).
//
// Three nodes in this process, over TCP on 127.0.0.1. Two of them provide
// the service "api" at an endpoint with metadata; the third, a gateway,
// watches "api" and looks it up. Then one provider stops: the gateway sees
// its registration go (the node left), and find() shows the one left.
// Exit status 0 when every step converged, 1 otherwise.
//
// Build and run: `ninja -C build examples/service-discovery &&
// ./build/examples/service-discovery` (a test: example_service_discovery).
#include <barrel_p2p/node.hpp>
#include <barrel_p2p/registry.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>

#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

using cluster = std::vector<std::unique_ptr<node>>;

node_config config_for(const std::string& id, const cluster& nodes) {
  node_config c;
  c.transport.node_id = id;  // 127.0.0.1, a port chosen by the OS
  c.transport.cluster_secret = "service-discovery-example";  // a long random secret in production
  if (!nodes.empty()) c.contacts.push_back(nodes.front()->self().address);
  c.log = [](const std::string&) {};
  return c;
}

json metadata(const std::string& zone) {  // json is built outside coroutines (GCC 12)
  json m = json::object();
  m["zone"] = zone;
  m["version"] = "1.4.2";
  return m;
}

// Polls `done` on the node's clock until it holds or `limit` passes.
task<bool> until(node& n, std::function<bool()> done, duration limit) {
  const auto end = n.sched().now() + limit;
  while (!done()) {
    if (n.sched().now() > end) co_return false;
    const bool slept = co_await n.sched().sleep(20ms);
    if (!slept) co_return false;
  }
  co_return true;
}

// Prints what the gateway's watch sees, until the stream ends.
task<> print_events(event_stream<service_event> events) {
  while (auto ev = co_await events.next()) {
    const auto& p = ev->provider;
    std::printf("  gateway sees: %s '%s' on %s at %s %s\n",
                ev->what == service_event::kind::registered ? "registered" : "deregistered", p.service.c_str(),
                p.node.c_str(), p.endpoint.c_str(), p.metadata.dump().c_str());
  }
}

task<bool> scenario(cluster& nodes) {
  node& gateway = *nodes[0];
  auto seen = registry::open(gateway);
  boost::asio::co_spawn(gateway.get_executor(), print_events(seen->watch("api")), boost::asio::detached);

  co_await registry::open(*nodes[1])->register_service("api", "127.0.0.1:8081", metadata("eu-west-1a"));
  co_await registry::open(*nodes[2])->register_service("api", "127.0.0.1:8082", metadata("eu-west-1b"));
  // lookup() never waits: poll until both registrations have arrived.
  const bool both = co_await until(gateway, [&] { return seen->lookup("api").size() == 2; }, 10s);
  if (!both) co_return false;
  std::printf("\n  lookup(\"api\") on the gateway:\n");
  for (const auto& p : seen->lookup("api"))
    std::printf("    %s at %s, zone %s\n", p.node.c_str(), p.endpoint.c_str(),
                p.metadata.value("zone", std::string("?")).c_str());

  std::printf("\n  %s stops: it leaves the cluster, its registration goes with it\n", nodes[2]->id().c_str());
  co_await nodes[2]->stop();
  const bool one_left = co_await until(gateway, [&] { return seen->lookup("api").size() == 1; }, 10s);
  if (!one_left) co_return false;
  // find() answers from this node's table, and asks the cluster only when
  // it knows no provider at all.
  auto found = co_await seen->find("api", 2s);
  std::printf("\n  find(\"api\") on the gateway: %zu provider(s): %s\n", found.size(),
              found.empty() ? "-" : found[0].endpoint.c_str());
  co_return found.size() == 1 && found[0].node == nodes[1]->id();
}

// Runs on the io_context; the nodes make their own strands over it.
task<bool> run(cluster& nodes) {
  auto ex = co_await boost::asio::this_coro::executor;
  for (const char* id : {"gateway", "api-1", "api-2"}) {
    nodes.push_back(std::make_unique<node>(ex, config_for(id, nodes)));
    co_await nodes.back()->start();  // api-1 and api-2 join through the gateway
  }
  const bool ok = co_await scenario(nodes);
  for (auto& n : nodes) co_await n->stop();
  co_return ok;
}

}  // namespace

int main() {
  boost::asio::io_context io;
  cluster nodes;
  bool ok = false;
  boost::asio::co_spawn(io, run(nodes), [&](std::exception_ptr e, bool result) {
    ok = !e && result;
    io.stop();
  });
  io.run();
  std::printf("\nservice discovery: %s\n", ok ? "every step converged" : "FAILED");
  return ok ? 0 : 1;
}
