#include "barrel_p2p/detail/wake_signal.hpp"

#include "barrel_p2p/scheduler.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <cstdint>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace barrel_p2p {

namespace asio = boost::asio;

struct wake_signal::state {
  executor ex;
  // Held through a unique_ptr: Asio 1.81's any_completion_handler move
  // assignment recurses (it copies through its converting constructor),
  // and a lambda holding one by value looks copyable for the same reason.
  using handler = asio::any_completion_handler<void(bool)>;
  std::unique_ptr<handler> waiter;
  executor waiter_ex;
  asio::cancellation_slot slot;
  bool pending = false;
  bool closed = false;
  std::uint64_t waits = 0;  // counts waits: a cancellation is for its own wait only

  // Resumes the waiter, if any, with `value` (posted: never inline). From
  // the cancellation handler itself the slot is left alone: clearing it
  // there would destroy the handler that is running.
  void complete(bool value, bool cancelling = false) {
    if (!waiter) return;
    if (!cancelling && slot.is_connected()) slot.clear();
    slot = {};
    // Posted to the waiter's own executor, taken when it began to wait.
    asio::post(waiter_ex, [h = std::move(waiter), value]() mutable { std::move(*h)(value); });
  }
};

wake_signal::wake_signal(executor ex) : state_(std::make_shared<state>()) { state_->ex = std::move(ex); }

wake_signal::~wake_signal() { close(); }

task<bool> wake_signal::wait() {
  auto st = state_;  // the frame keeps the state alive while suspended
  if (st->closed) co_return false;
  if (st->pending) {
    st->pending = false;
    co_return true;
  }
  // Named and holding a plain pointer: GCC 12 destroys a temporary in a
  // co_await expression twice (see docs/how-to/contributing.md).
  auto* raw = st.get();
  const std::weak_ptr<state> weak = st;
  const auto this_wait = ++st->waits;
  const auto initiate = [raw, &weak, this_wait](auto handler) {
    auto slot = asio::get_associated_cancellation_slot(handler);
    raw->waiter_ex = asio::get_associated_executor(handler, raw->ex);
    raw->waiter = std::make_unique<state::handler>(std::move(handler));
    if (slot.is_connected()) {
      raw->slot = slot;
      // After a cancellation the handler stays in the slot, which its
      // owner may emit again: after the state is gone (so weak), or while
      // another coroutine waits (so only for this wait).
      slot.assign([weak, this_wait](asio::cancellation_type) {
        if (auto s = weak.lock(); s && s->waits == this_wait) s->complete(false, true);
      });
    }
  };
  const bool woken = co_await asio::async_initiate<decltype(asio::use_awaitable), void(bool)>(initiate,
                                                                                            asio::use_awaitable);
  co_return woken && !st->closed;
}

void wake_signal::notify() {
  if (state_->closed) return;
  if (state_->waiter)
    state_->complete(true);
  else
    state_->pending = true;
}

void wake_signal::close() {
  state_->closed = true;
  state_->pending = false;
  state_->complete(false);
}

task<> notify_after(scheduler& sched, std::shared_ptr<wake_signal> wake, duration after) {
  // Not `if (co_await ...)`: GCC 12 miscompiled that in a coroutine (SIGILL).
  const bool elapsed = co_await sched.sleep(after);
  if (elapsed) wake->notify();
}

}  // namespace barrel_p2p
