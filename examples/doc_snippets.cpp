// The C++ snippets of the README and docs/reference/cpp-api.md, compiled.
//
// Each region between "// [snippet NAME]" and "// [end]" is, line for line,
// a code block of the docs marked `<!-- compiled: examples/doc_snippets.cpp#NAME -->`;
// tools/check_snippets.py (meson test `doc_snippets`) fails when the two
// differ, and this file failing to compile fails the build. The functions
// around the regions only supply the names a snippet uses; nothing here
// runs.
#include <barrel_p2p/http_api.hpp>
#include <barrel_p2p/leader.hpp>
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/metrics.hpp>
#include <barrel_p2p/node.hpp>

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace readme {

task<> taste(boost::asio::io_context& io) {
  // [snippet readme]
  barrel_p2p::node_config cfg;
  cfg.transport.node_id = "a";
  cfg.transport.cluster_secret = "a long random string shared by the cluster";  // >= 16 bytes
  cfg.contacts = {{"10.0.0.2", 7946}};
  barrel_p2p::node n(io.get_executor(), cfg);
  co_await n.start();
  auto kv = barrel_p2p::map::open(n, "sessions");
  barrel_p2p::json seen = {{"seen", 1700000000}};  // built first: GCC 12 and braced
  co_await kv->put("user:42", seen);                 // temporaries in co_await don't mix
  auto v = kv->get("user:42");          // never waits; any thread
  auto events = kv->subscribe();         // local and remote changes
  while (auto ev = co_await events.next()) { /* ... */ }
  // [end]
}

}  // namespace readme

namespace api {

task<> node_lifecycle(boost::asio::io_context& io, std::string secret) {
  // [snippet node]
  node_config cfg;
  cfg.transport.node_id = "a";                       // unique, 1-255 bytes
  cfg.transport.cluster_secret = secret;             // same on every node
  cfg.transport.listen_port = 7946;                  // 0: a free port
  cfg.contacts.push_back(peer_address("10.0.0.2", 7946));
  cfg.data_dir = "/var/lib/myapp";                   // only for persisted maps
  node n(io.get_executor(), cfg);                    // makes a strand over the executor

  join_result joined = co_await n.start();   // listen, start every layer, try the contacts in order
  if (joined.duplicate_id_at) { /* a node at that address uses this id too: fix the configuration */ }
  if (!joined.joined) {
    bool in_cluster = co_await n.wait_joined(10s);   // the contacts are retried meanwhile
  }
  co_await n.stop();    // close maps and elections, leave politely, stop every layer
  // [end]
}

void clocks(node& n) {
  // [snippet clocks]
  for (const peer_clock& p : n.clocks().peers())   // on the node's executor
    std::cout << p.peer_id << " " << p.offset.count() << " ms\n";
  if (n.clocks().refusing_writes()) { /* puts throw clock_skew_error now */ }
  // [end]
}

task<> keys(node& n, std::string new_key, std::string old_key) {
  // [snippet keys]
  std::vector<std::string> accepted{old_key};       // not braced inside co_await (GCC 12)
  co_await n.set_cluster_secrets(new_key, accepted);  // psk: dial with new_key, accept both
  co_await n.reload_certificates();                    // certificates: re-read the three files
  // [end]
}

void sync_settings(node_config& cfg) {
  // [snippet sync-settings]
  cfg.replicas.anti_entropy_interval = 5s;       // a round between equal maps is one small message
  cfg.replicas.range_sync.branching = 16;        // a differing range is split into this many
  cfg.replicas.range_sync.list_threshold = 16;   // at most this many items: listed, not split
  cfg.replicas.range_sync.max_ranges = 2048;     // ranges per message; peers check the default
  cfg.replicas.range_sync.max_need = 65'536;     // items asked for per message; peers check the default
  cfg.replicas.reconcile_batch_items = 4096;     // entries per pushed snapshot
  // [end]
}

task<> map_usage(node& n) {
  // [snippet map]
  map_options opts;
  opts.persist = true;                                  // needs cfg.data_dir
  opts.validator = [](const std::string&, const json& v) { return v.is_object(); };
  auto kv = map::open(n, "sessions", opts);             // open until close() or n.stop()

  json v;
  v["room"] = 3;
  co_await kv->put("alice", v);        // fsynced (first), then applied here, when it returns
  co_await kv->remove("bob");          // a tombstone
  std::optional<json> a = kv->get("alice");             // never waits
  std::vector<std::pair<std::string, json>> all = kv->to_list();
  map_page p = kv->page(100);                           // the first 100 entries in key order
  if (p.more) p = kv->page(100, p.entries.back().first);  // the next 100, after the last key

  auto events = kv->subscribe();                        // changes from now on
  while (auto ev = co_await events.next()) {
    if (ev->what == map_event::kind::put) { /* ev->key, ev->value */ }
  }
  // [end]
}

void use_token(std::uint64_t) {}
void stop_leading() {}

task<> leadership(node& n) {
  // [snippet elections]
  auto el = elections::open(n);                  // one service per node
  campaign_options o;
  o.priority = 10;                               // higher wins; ties: lowest node id
  std::unique_ptr<campaign> c = co_await el->lead("scheduler", o);
  if (c->initial_role() == election_role::leader) use_token(*c->initial_fence());
  while (auto ev = co_await c->next()) {
    if (ev->what == leadership_event::kind::elected) use_token(ev->fence);
    else stop_leading();                         // revoked
  }
  co_await c->resign();                          // or destroy the campaign
  // [end]
}

task<> http(node& n, std::shared_ptr<map> kv, std::string token) {
  // [snippet http]
  http_api_config hc;
  hc.listen_port = 8946;
  hc.bearer_token = token;
  http_api api(n, hc);               // n must outlive api
  co_await api.expose(kv);           // serve /maps/sessions
  co_await api.start();              // bind; port() after this
  co_await api.stop();               // before n.stop()
  // [end]
}

std::string metrics(node& n, std::shared_ptr<map> kv) {
  // [snippet metrics]
  prometheus_writer w;
  write_node_metrics(w, n);            // on n.get_executor()
  std::vector<std::shared_ptr<map>> maps{kv};
  write_map_metrics(w, n, maps);
  std::string text = w.text();
  // [end]
  return text;
}

// [snippet wait-for-size]
// On the node's executor. true once kv holds at least `want` keys; false
// if the map was closed (or this coroutine cancelled) first.
task<bool> wait_for_size(std::shared_ptr<map> kv, std::size_t want) {
  auto events = kv->subscribe(16);   // before the first check: no change slips in between
  while (kv->size() < want) {
    auto event = co_await events.next();   // a local first: GCC 12 and co_await in conditions
    if (!event) co_return false;
  }
  co_return true;
}
// [end]

task<> wait_for_size_call(std::shared_ptr<map> kv) {
  // [snippet wait-for-size-call]
  bool arrived = co_await wait_for_size(kv, 1000);   // from a coroutine on n.get_executor()
  // [end]
}

}  // namespace api

// [snippet stop-all]
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/use_awaitable.hpp>

// One node's stop, launched later on that node's executor.
auto stop_op(node& n) {
  return boost::asio::co_spawn(n.get_executor(), n.stop(), boost::asio::deferred);
}

// Any executor. Returns once every node has stopped.
task<> stop_all(std::vector<node*> nodes) {
  if (nodes.empty()) co_return;  // an empty group would never complete
  std::vector<decltype(stop_op(*nodes[0]))> ops;
  for (node* n : nodes) ops.push_back(stop_op(*n));
  auto [order, errors] =
      co_await boost::asio::experimental::make_parallel_group(std::move(ops))
          .async_wait(boost::asio::experimental::wait_for_all(), boost::asio::use_awaitable);
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}
// [end]

int main() { return 0; }
