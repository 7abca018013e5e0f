// A cluster of full nodes over loopback TCP for the map and storage
// suites: one io_context, nodes added one by one (each joins the first).
#pragma once

#include <barrel_p2p/map.hpp>

#include "io_harness.hpp"

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

namespace barrel_p2p::testing {

using namespace std::chrono_literals;

inline std::filesystem::path temp_dir(const std::string& tag) {
  auto p = std::filesystem::temp_directory_path() /
           ("barrel_p2p_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(std::rand()));
  std::filesystem::remove_all(p);
  return p;
}

inline node_config tcp_config(const std::string& id, const std::filesystem::path& data = {}) {
  auto c = fast_tcp_config(id, "map-test-cluster-secret");
  c.data_dir = data;
  return c;
}

struct cluster {
  boost::asio::io_context io;
  std::vector<std::unique_ptr<node>> nodes;

  // The limits only catch hangs (see io_harness.hpp).
  void run(const std::function<task<>()>& body, duration limit = 60s) { testing::run(io, body, limit); }
  bool eventually(const std::function<bool()>& cond, duration limit = 30s) {
    return testing::eventually(io, cond, limit);
  }

  node& add(const std::string& id, const std::filesystem::path& data = {},
            const std::function<void(node_config&)>& tweak = {}) {
    auto c = tcp_config(id, data);
    if (tweak) tweak(c);
    if (!nodes.empty()) c.contacts.push_back(nodes[0]->self().address);
    nodes.push_back(std::make_unique<node>(io.get_executor(), c));
    auto& n = *nodes.back();
    run([&]() -> task<> { co_await n.start(); });
    return n;
  }

  void stop_all() {
    run([&]() -> task<> {
      for (auto& n : nodes) co_await n->stop();
    });
    nodes.clear();
  }
  ~cluster() {
    // Never throw from here: a failed test is already unwinding.
    try {
      if (!nodes.empty()) stop_all();
    } catch (...) {
    }
  }
};

}  // namespace barrel_p2p::testing
