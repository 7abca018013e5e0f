// Driving a real io_context from a test: run a coroutine to completion, or
// poll a condition until it holds. The limits only catch hangs; no test
// asserts on how fast anything happens.
#pragma once

#include <barrel_p2p/node.hpp>
#include <barrel_p2p/scheduler.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>

namespace barrel_p2p::testing {

/// Runs `body` on `io` until it finishes; rethrows what it threw.
inline void run(boost::asio::io_context& io, const std::function<task<>()>& body,
                duration limit = std::chrono::seconds(60)) {
  bool done = false;
  std::exception_ptr error;
  boost::asio::co_spawn(io, body, [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  auto sched = make_real_scheduler(io.get_executor());
  const auto end = sched->now() + limit;
  while (!done && sched->now() < end) io.run_for(std::chrono::milliseconds(20));
  io.restart();
  REQUIRE(done);
  if (error) std::rethrow_exception(error);
}

/// Polls `cond` every 10 ms while `io` runs; false if `limit` passed first.
inline bool eventually(boost::asio::io_context& io, const std::function<bool()>& cond,
                       duration limit = std::chrono::seconds(30)) {
  bool ok = false;
  run(io, [&]() -> task<> {
    auto sched = make_real_scheduler(io.get_executor());
    const auto end = sched->now() + limit;
    while (!(ok = cond()) && sched->now() < end) co_await sched->sleep(std::chrono::milliseconds(10));
  }, limit + std::chrono::seconds(5));
  return ok;
}

/// A node config for loopback TCP tests: the public `test` profile (fast
/// heartbeats, maintenance, shuffles and anti-entropy, so failures and
/// repairs show within a second or two; logs only when BARREL_TEST_LOG is
/// set). Tests change single fields from there.
inline node_config fast_tcp_config(const std::string& id, const std::string& secret) {
  return make_node_config(node_profile::test, id, secret);
}

}  // namespace barrel_p2p::testing
