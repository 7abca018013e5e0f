// Queries with answers (docs/concepts/queries.md).
//
// Four nodes in this process, over TCP on 127.0.0.1, each with member tags
// (role db or web). Every node answers the query "load" with a figure of
// its own; one node asks everybody, then only the db nodes, then takes the
// first two answers and stops waiting. Exit status 0 when every step got
// the answers it should, 1 otherwise.
//
// Build and run: `ninja -C build examples/cluster-queries &&
// ./build/examples/cluster-queries` (a test: example_cluster_queries).
#include <barrel_p2p/members.hpp>
#include <barrel_p2p/node.hpp>
#include <barrel_p2p/queries.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>

#include <cstdio>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

using namespace barrel_p2p;
using namespace std::chrono_literals;

namespace {

using cluster = std::vector<std::unique_ptr<node>>;

node_config config_for(const std::string& id, const cluster& nodes) {
  node_config c;
  c.transport.node_id = id;  // 127.0.0.1, a port chosen by the OS
  c.transport.cluster_secret = "cluster-queries-example";  // a long random secret in production
  if (!nodes.empty()) c.contacts.push_back(nodes.front()->self().address);
  c.log = [](const std::string&) {};
  return c;
}

// The handler's work: a coroutine function. A handler may await (a disk
// read, a call to another service) before it answers; nullopt answers
// nothing.
task<std::optional<json>> report_load(std::string id, double load, query_request asked) {
  json answer = json::object();
  answer["node"] = id;
  answer["load"] = load;
  answer["asked_by"] = asked.from;
  co_return answer;
}

// Asks `name` and prints the answers as they arrive; returns who answered.
task<std::set<std::string>> ask_and_print(queries& q, const char* title, query_options options) {
  std::printf("\n  %s\n", title);
  std::set<std::string> answered;
  auto answers = co_await q.ask("load", json(nullptr), std::move(options));
  while (auto a = co_await answers.next()) {
    std::printf("    %-6s load %.2f  (after %lld ms)\n", a->node.c_str(), a->payload.value("load", 0.0),
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(a->after).count()));
    answered.insert(a->node);
  }
  co_return answered;
}

task<bool> scenario(cluster& nodes) {
  std::vector<std::shared_ptr<queries>> qs;
  std::vector<std::shared_ptr<members>> dirs;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    member_tags tags;
    tags["role"] = i < 2 ? "db" : "web";
    dirs.push_back(co_await members::open(*nodes[i], tags));  // tag filters read the member directory
    auto q = co_await queries::open(*nodes[i]);
    const double load = 0.25 * static_cast<double>(i + 1);
    q->handle("load", [id = nodes[i]->id(), load](query_request r) { return report_load(id, load, std::move(r)); });
    qs.push_back(std::move(q));
  }
  // A tag filter is judged by each node against its own tags, which it
  // announces in the directory: wait until every node lists everyone.
  for (int tries = 0; tries < 500; ++tries) {
    bool all = true;
    for (auto& d : dirs) all = all && d->list().size() == nodes.size();
    if (all) break;
    const bool slept = co_await nodes[0]->sched().sleep(20ms);  // not inside a condition (GCC 12)
    if (!slept) break;
  }

  queries& asker = *qs[3];
  query_options everyone;
  everyone.timeout = 1s;  // the stream ends after a second
  const auto all = co_await ask_and_print(asker, "every node, for 1 s:", everyone);

  query_options db_only;
  db_only.timeout = 1s;
  db_only.tags["role"] = "db";
  const auto dbs = co_await ask_and_print(asker, "only role=db:", db_only);

  query_options first_two;
  first_two.timeout = 30s;
  first_two.max_answers = 2;  // ends as soon as two nodes answered
  const auto two = co_await ask_and_print(asker, "the first two answers (the stream ends at once):", first_two);

  co_return all.size() == 4 && dbs == std::set<std::string>{"db-1", "db-2"} && two.size() == 2;
}

// Runs on the io_context; the nodes make their own strands over it.
task<bool> run(cluster& nodes) {
  auto ex = co_await boost::asio::this_coro::executor;
  for (const char* id : {"db-1", "db-2", "web-1", "web-2"}) {
    nodes.push_back(std::make_unique<node>(ex, config_for(id, nodes)));
    co_await nodes.back()->start();
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
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        std::printf("failed: %s\n", x.what());
      }
    }
    ok = !e && result;
    io.stop();
  });
  io.run();
  std::printf("\ncluster queries: %s\n", ok ? "every step got its answers" : "FAILED");
  return ok ? 0 : 1;
}
