// Internal (detail/): shared by the library, its tests and fuzzers; not API.
// A set of coroutines that stop together: what each component uses for its
// loops. stop() cancels every member (Asio terminal cancellation reaches the
// operation each one is suspended in) and returns once all have finished.
#pragma once

#include <barrel_p2p/task.hpp>

#include <concepts>
#include <cstddef>
#include <functional>
#include <list>
#include <memory>
#include <string>

namespace barrel_p2p {

class task_group {
 public:
  /// Called with the name of a member that ended with an exception. Members
  /// are loops that should never throw; this is the last-resort log line.
  using error_sink = std::function<void(const std::string& name, const std::string& what)>;

  explicit task_group(executor ex, error_sink on_error = {});
  ~task_group();  // cancels what is left; does not wait
  task_group(const task_group&) = delete;
  task_group& operator=(const task_group&) = delete;

  /// Starts `t` now. After stop() has begun, spawn does nothing.
  void spawn(std::string name, task<> t);

  /// Starts the coroutine lambda `f`, keeping `f` (and so its captures)
  /// alive until it finishes. Spawning `[x]() -> task<> {...}()` directly
  /// would leave the coroutine reading a destroyed closure.
  template <class F>
    requires std::invocable<F&>
  void spawn(std::string name, F f) {
    spawn(std::move(name), call_owned(std::move(f)));
  }

  /// Cancels every member and waits for all of them to finish.
  task<> stop();
  /// Cancels every member without waiting (for destructors); later spawns
  /// do nothing.
  void cancel();

  [[nodiscard]] std::size_t size() const noexcept;

 private:
  template <class F>
  static task<> call_owned(F f) {
    co_await f();
  }

  struct state;
  static task<> cancel_on_executor(std::shared_ptr<state> st);
  std::shared_ptr<state> state_;
};

}  // namespace barrel_p2p
