// Embedding a node in an existing Asio server.
//
// What it shows. Your server already has an io_context, an acceptor and
// coroutine handlers; barrel_p2p adds a node on the same io_context and a
// replicated map your handlers `co_await` like any other Asio operation.
// Here the server speaks a line protocol on its own port:
//
//   SET <key> <text>   -> OK          (co_await sessions->put(...))
//   GET <key>          -> VALUE <text> | NONE   (a read that never waits)
//   DEL <key>          -> OK
//
// Two instances of the server run in this process (two nodes, two service
// ports), which stands for two machines. A client writes through instance A
// and reads through instance B; the map carries the value across. A change
// watcher on B logs each replicated change (map::subscribe). Exit status 0
// when the value arrived, 1 otherwise.
//
// Build and run: `ninja -C build examples/asio-server && ./build/examples/asio-server`.
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/node.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

namespace asio = boost::asio;
using asio::ip::tcp;
using barrel_p2p::json;
using barrel_p2p::task;

namespace {

constexpr auto no_throw = asio::as_tuple(asio::use_awaitable);

// ---- the application's own server ------------------------------------------

std::string answer_read(barrel_p2p::map& sessions, const std::string& key) {
  auto v = sessions.get(key);  // never waits: a read of the local projection
  return v ? "VALUE " + v->get<std::string>() + "\n" : "NONE\n";
}

// One client connection: read a line, act, answer. An ordinary Asio
// coroutine; the map's put/remove are awaited like a socket write.
task<> serve_client(tcp::socket socket, std::shared_ptr<barrel_p2p::map> sessions) {
  asio::streambuf buffer(64 * 1024);  // bounded: a client cannot grow it forever
  for (;;) {
    auto [ec, n] = co_await asio::async_read_until(socket, buffer, '\n', no_throw);
    if (ec) co_return;
    std::string line(asio::buffers_begin(buffer.data()), asio::buffers_begin(buffer.data()) + n - 1);
    buffer.consume(n);
    std::istringstream words(line);
    std::string verb, key, text;
    words >> verb >> key;
    std::getline(words >> std::ws, text);
    std::string reply;
    try {
      if (verb == "SET" && !key.empty()) {
        co_await sessions->put(key, json(text));
        reply = "OK\n";
      } else if (verb == "DEL" && !key.empty()) {
        co_await sessions->remove(key);
        reply = "OK\n";
      } else if (verb == "GET" && !key.empty()) {
        reply = answer_read(*sessions, key);
      } else {
        reply = "ERROR expected SET/GET/DEL <key>\n";
      }
    } catch (const barrel_p2p::map_error& e) {
      reply = std::string("ERROR ") + e.what() + "\n";
    }
    auto [wec, wn] = co_await asio::async_write(socket, asio::buffer(reply), no_throw);
    if (wec) co_return;
  }
}

task<> accept_clients(tcp::acceptor& acceptor, std::shared_ptr<barrel_p2p::map> sessions) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(no_throw);
    if (ec) co_return;
    asio::co_spawn(acceptor.get_executor(), serve_client(std::move(socket), sessions), asio::detached);
  }
}

// Logs every change to the map, local or replicated from a peer.
task<> watch_changes(std::string who, barrel_p2p::event_stream<barrel_p2p::map_event> changes) {
  while (auto ev = co_await changes.next()) {
    std::cout << "  [" << who << " sees] " << (ev->what == barrel_p2p::map_event::kind::put ? "put " : "remove ")
              << ev->key << "\n";
  }
}

// One instance of the application: its own service port plus a node.
struct app {
  std::unique_ptr<barrel_p2p::node> node;
  std::shared_ptr<barrel_p2p::map> sessions;
  std::unique_ptr<tcp::acceptor> acceptor;
};

std::unique_ptr<app> make_app(asio::io_context& io, const std::string& id,
                              std::optional<barrel_p2p::peer_address> contact) {
  auto a = std::make_unique<app>();
  barrel_p2p::node_config config;
  config.transport.node_id = id;
  config.transport.cluster_secret = "example-cluster-secret";  // in production: from a file
  if (contact) config.contacts.push_back(*contact);
  config.log = [](const std::string&) {};  // quiet; the default logs to stderr
  a->node = std::make_unique<barrel_p2p::node>(io.get_executor(), config);
  a->sessions = barrel_p2p::map::open(*a->node, "sessions");
  a->acceptor = std::make_unique<tcp::acceptor>(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a;
}

// ---- a client of the application's protocol ---------------------------------

task<std::string> ask(std::uint16_t port, std::string line) {
  tcp::socket socket(co_await asio::this_coro::executor);
  co_await socket.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), asio::use_awaitable);
  line += "\n";
  co_await asio::async_write(socket, asio::buffer(line), asio::use_awaitable);
  asio::streambuf buffer;
  auto n = co_await asio::async_read_until(socket, buffer, '\n', asio::use_awaitable);
  co_return std::string(asio::buffers_begin(buffer.data()), asio::buffers_begin(buffer.data()) + n - 1);
}

task<> sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
}

task<int> scenario(app& a, app& b) {
  const auto port_a = a.acceptor->local_endpoint().port();
  const auto port_b = b.acceptor->local_endpoint().port();
  std::cout << "client -> A: SET user:42 alice   <- " << co_await ask(port_a, "SET user:42 alice") << "\n";
  // B learns the value through the cluster; poll B's own protocol for it.
  for (int i = 0; i < 500; ++i) {
    auto got = co_await ask(port_b, "GET user:42");
    if (got == "VALUE alice") {
      std::cout << "client -> B: GET user:42         <- " << got << "\n";
      std::cout << "client -> B: DEL user:42         <- " << co_await ask(port_b, "DEL user:42") << "\n";
      for (int j = 0; j < 500; ++j) {
        auto after = co_await ask(port_a, "GET user:42");
        if (after == "NONE") {
          std::cout << "client -> A: GET user:42         <- " << after << "\n";
          co_return 0;
        }
        co_await sleep_for(std::chrono::milliseconds(10));
      }
      break;
    }
    co_await sleep_for(std::chrono::milliseconds(10));
  }
  std::cout << "the change did not reach the other instance\n";
  co_return 1;
}

task<int> run(asio::io_context& io) {
  auto a = make_app(io, "app-a", std::nullopt);
  co_await a->node->start();
  auto b = make_app(io, "app-b", a->node->self().address);
  co_await b->node->start();
  for (auto* x : {a.get(), b.get()})
    asio::co_spawn(io, accept_clients(*x->acceptor, x->sessions), asio::detached);
  // Subscribing happens on the node's executor, where the map publishes.
  asio::co_spawn(b->node->get_executor(), watch_changes("B", b->sessions->subscribe()), asio::detached);

  const int status = co_await scenario(*a, *b);

  // Shut down in reverse: stop taking clients, then stop the nodes (which
  // closes their maps and leaves the cluster).
  a->acceptor->close();
  b->acceptor->close();
  co_await b->node->stop();
  co_await a->node->stop();
  co_return status;
}

}  // namespace

int main() {
  asio::io_context io;
  int status = 1;
  asio::co_spawn(io, run(io), [&](std::exception_ptr e, int s) {
    status = e ? 1 : s;
    io.stop();  // a client connection left open must not keep us waiting
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        std::cerr << "asio-server: " << ex.what() << "\n";
      }
    }
  });
  io.run_for(std::chrono::seconds(60));
  return status;
}
