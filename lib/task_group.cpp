#include "barrel_p2p/detail/task_group.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <iostream>
#include <vector>

namespace barrel_p2p {

namespace asio = boost::asio;

struct task_group::state {
  executor ex;
  error_sink on_error;
  // One signal per running member; std::list keeps addresses stable.
  std::list<asio::cancellation_signal> signals;
  std::size_t running = 0;
  bool stopping = false;
  std::vector<asio::steady_timer*> waiters;  // stop() calls waiting for zero

  void cancel_all() {
    std::vector<asio::cancellation_signal*> targets;
    for (auto& s : signals) targets.push_back(&s);
    for (auto* s : targets) s->emit(asio::cancellation_type::terminal);
  }
};

task_group::task_group(executor ex, error_sink on_error)
    : state_(std::make_shared<state>()) {
  state_->ex = std::move(ex);
  state_->on_error = std::move(on_error);
}

// Cancellation from a destructor or cancel() is posted, not emitted on the
// spot: a member spawned a moment ago may not have started yet, and
// cancelling a coroutine that Asio has not yet launched was seen to disturb
// other coroutines (see docs/how-to/contributing.md).
task_group::~task_group() {
  state_->stopping = true;
  boost::asio::post(state_->ex, [st = state_] { st->cancel_all(); });
}

void task_group::spawn(std::string name, task<> t) {
  auto st = state_;
  if (st->stopping) return;
  auto signal = st->signals.emplace(st->signals.end());
  ++st->running;
  asio::co_spawn(
      st->ex, std::move(t),
      asio::bind_cancellation_slot(
          signal->slot(), [st, signal, name = std::move(name)](std::exception_ptr e) {
            st->signals.erase(signal);
            --st->running;
            if (e) {
              std::string what = "unknown exception";
              bool expected = false;
              try {
                std::rethrow_exception(e);
              } catch (const boost::system::system_error& ex) {
                // Being cancelled while stopping is how members end.
                expected = st->stopping && ex.code() == asio::error::operation_aborted;
                what = ex.what();
              } catch (const std::exception& ex) {
                what = ex.what();
              } catch (...) {
              }
              if (!expected) {
                if (st->on_error) st->on_error(name, what);
                else std::cerr << "barrel_p2p: task '" << name << "' failed: " << what << '\n';
              }
            }
            if (st->running == 0)
              for (auto* w : st->waiters) w->cancel();
          }));
}

void task_group::cancel() {
  state_->stopping = true;
  boost::asio::post(state_->ex, [st = state_] { st->cancel_all(); });
}

// Emits on the group's executor. Asio 1.81's co_spawn cancellation handler
// forwards an emit to the coroutine's executor with dispatch(), holding a raw
// pointer to its own signal: from another executor that becomes a post, and
// a member that finishes before the post runs frees the signal first (a
// use-after-free seen as a crash in the throughput benchmark when node::stop
// ran from the io_context while the node's loops lived on its strand). On
// the member's own executor the dispatch runs inline, while it is alive.
task<> task_group::cancel_on_executor(std::shared_ptr<state> st) {
  st->cancel_all();
  co_return;
}

task<> task_group::stop() {
  auto st = state_;
  st->stopping = true;
  co_await asio::co_spawn(st->ex, cancel_on_executor(st), asio::use_awaitable);
  while (st->running > 0) {
    asio::steady_timer idle(st->ex, asio::steady_timer::time_point::max());
    st->waiters.push_back(&idle);
    // Out of the list however the wait ends (a cancelled caller throws).
    struct unlisted {
      std::vector<asio::steady_timer*>& list;
      asio::steady_timer* t;
      ~unlisted() { std::erase(list, t); }
    } guard{st->waiters, &idle};
    co_await idle.async_wait(asio::as_tuple(asio::use_awaitable));
  }
}

std::size_t task_group::size() const noexcept { return state_->running; }

}  // namespace barrel_p2p
