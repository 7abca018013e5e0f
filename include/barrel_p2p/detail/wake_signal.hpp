// Internal (detail/): shared by the library, its tests and fuzzers; not API.
// The library's one wake-up primitive: a coroutine waits until another part
// of the same executor says "there is something for you".
//
// Instead of a timer set to forever and cancelled as a signal, or a loop that
// polls: notify() before wait() is remembered (one pending wake-up), so no
// notification is lost between a check and the wait. wait() returns false
// once close() was called, or when the waiting coroutine is cancelled (Asio
// terminal cancellation, as task_group::stop sends). One waiter at a time.
//
// Threading: wait, notify and close run on one executor (the node's); the
// waiter resumes through a post to its own executor, never inside notify().
#pragma once

#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/task.hpp>

#include <memory>

namespace barrel_p2p {

class wake_signal {
 public:
  /// `ex`: where a completion is posted when the waiter has no executor of its own.
  explicit wake_signal(executor ex);
  ~wake_signal();  // a waiter still suspended is resumed with false
  wake_signal(const wake_signal&) = delete;
  wake_signal& operator=(const wake_signal&) = delete;

  /// True when notified (now or since the last wait), false when closed or
  /// cancelled.
  task<bool> wait();
  /// Wakes the waiter, or remembers one wake-up for the next wait().
  void notify();
  /// Wakes the waiter with false; every later wait() returns false at once.
  void close();

  struct state;

 private:
  std::shared_ptr<state> state_;
};

/// A timeout for a waiter: notifies `wake` once `after` has passed on
/// `sched` (unless cancelled first). Spawn it beside the wait.
task<> notify_after(scheduler& sched, std::shared_ptr<wake_signal> wake, duration after);

}  // namespace barrel_p2p
