#include <barrel_p2p/map.hpp>
#include <barrel_p2p/node.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <csignal>
#include <iostream>

using namespace barrel_p2p;

// Runs on the node's executor (spawned there below).
task<> run(node& n, std::shared_ptr<map>& kv) {
  join_result joined = co_await n.start();   // listen, then try the contacts
  if (!joined.joined) std::cout << "no contact answered yet; retrying in the background\n";
  kv = map::open(n, "kv");             // open until close() or n.stop()
  json value;
  value["name"] = "bob";
  co_await kv->put("user:7", value);   // applied here, then gossiped
  if (auto v = kv->get("user:7"))      // never waits; any thread
    std::cout << v->dump() << "\n";
}

int main() {
  boost::asio::io_context io;
  node_config cfg;
  cfg.transport.node_id = "app-1";
  cfg.transport.cluster_secret = "<cluster.secret without its newline>";  // read it from the file
  cfg.contacts.push_back(peer_address("127.0.0.1", 7946));             // listen_port 0: a free port
  node n(io.get_executor(), cfg);
  std::shared_ptr<map> kv;
  boost::asio::co_spawn(n.get_executor(), run(n, kv), boost::asio::detached);

  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code&, int) {
    // node::stop closes the maps, leaves the cluster, stops every layer.
    boost::asio::co_spawn(n.get_executor(), n.stop(), [&](std::exception_ptr) { io.stop(); });
  });
  io.run();
}
