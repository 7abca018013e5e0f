#include <barrel_p2p/event_stream.hpp>
#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/detail/task_group.hpp>
#include <barrel_p2p/detail/wake_signal.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

using namespace barrel_p2p;
using namespace std::chrono_literals;

TEST_CASE("task_group::stop cancels sleeping members and waits for them") {
  boost::asio::io_context io;
  auto sched = make_real_scheduler(io.get_executor());
  task_group group(io.get_executor());
  int finished = 0;
  for (int i = 0; i < 3; ++i)
    group.spawn("sleeper", [&]() -> task<> {
      const bool elapsed = co_await sched->sleep(std::chrono::hours(1));
      CHECK_FALSE(elapsed);
      ++finished;
    });
  bool stopped = false;
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await sched->sleep(10ms);
    CHECK(group.size() == 3);
    co_await group.stop();
    stopped = true;
  }, boost::asio::detached);
  io.run_for(30s);  // a hang guard, not a speed check
  CHECK(stopped);
  CHECK(finished == 3);
  CHECK(group.size() == 0);
}

TEST_CASE("a member that throws is reported and the others keep running") {
  boost::asio::io_context io;
  auto sched = make_real_scheduler(io.get_executor());
  std::vector<std::string> errors;
  task_group group(io.get_executor(), [&](const std::string& name, const std::string& what) {
    errors.push_back(name + ": " + what);
  });
  int ticks = 0;
  group.spawn("thrower", []() -> task<> {
    throw std::runtime_error("boom");
    co_return;
  });
  group.spawn("ticker", [&]() -> task<> {
    while (co_await sched->sleep(1ms)) ++ticks;
  });
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await sched->sleep(20ms);
    co_await group.stop();
  }, boost::asio::detached);
  io.run_for(30s);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0] == "thrower: boom");
  CHECK(ticks > 0);
}

TEST_CASE("event_stream delivers in order, bounds its buffer and ends on close") {
  boost::asio::io_context io;
  event_publisher<int> pub(io.get_executor());
  auto slow = pub.subscribe(3);
  auto fast = pub.subscribe(100);
  std::vector<int> got;
  boost::asio::co_spawn(io, [&]() -> task<> {
    while (auto v = co_await fast.next()) got.push_back(*v);
  }, boost::asio::detached);
  io.poll();
  for (int i = 0; i < 10; ++i) pub.publish(i);
  io.poll();
  CHECK(got == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  // The slow subscriber kept the newest 3 and counted the rest.
  CHECK(slow.pending() == 3);
  CHECK(slow.dropped() == 7);
  std::vector<int> slow_got;
  pub.close();
  boost::asio::co_spawn(io, [&]() -> task<> {
    while (auto v = co_await slow.next()) slow_got.push_back(*v);
  }, boost::asio::detached);
  io.run_for(10s);
  CHECK(slow_got == std::vector<int>{7, 8, 9});
}

TEST_CASE("wake_signal: a notify before the wait is kept, the waiter resumes later, close and cancel wake with false") {
  boost::asio::io_context io;
  auto sched = make_real_scheduler(io.get_executor());
  wake_signal sig(io.get_executor());
  std::vector<std::string> seen;
  boost::asio::co_spawn(io, [&]() -> task<> {
    sig.notify();
    sig.notify();  // two before a wait count as one
    CHECK(co_await sig.wait());
    seen.push_back("first");
    CHECK(co_await sig.wait());  // woken by the notify below
    seen.push_back("second");
    CHECK_FALSE(co_await sig.wait());  // closed
    seen.push_back("closed");
  }, boost::asio::detached);
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await sched->sleep(5ms);
    sig.notify();
    seen.push_back("notified");  // before the waiter runs: it resumes by a post
    co_await sched->sleep(5ms);
    sig.close();
  }, boost::asio::detached);
  io.run_for(30s);
  CHECK(seen == std::vector<std::string>{"first", "notified", "second", "closed"});

  // A waiter in a task_group ends when the group stops (terminal cancellation).
  io.restart();
  wake_signal idle(io.get_executor());
  task_group group(io.get_executor());
  bool woke = true;
  group.spawn("waiter", [&]() -> task<> { woke = co_await idle.wait(); });
  bool stopped = false;
  boost::asio::co_spawn(io, [&]() -> task<> {
    co_await sched->sleep(5ms);
    co_await group.stop();
    stopped = true;
  }, boost::asio::detached);
  io.run_for(30s);
  CHECK(stopped);
  CHECK_FALSE(woke);
}
