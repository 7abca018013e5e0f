// A bounded stream of events, consumed with `co_await stream.next()`.
//
// Publishers never block and never buffer without bound: each subscriber has
// a buffer of `capacity` events; when it is full the OLDEST event is dropped
// and counted (dropped()), so a slow subscriber loses history, not the
// present, and the publisher (membership, a map) is never held up. A
// subscriber that sees dropped() grow should re-read the current state.
//
// Threading: a publisher and its streams share one buffer per subscriber,
// without a lock. Every call, on either side, is made on the publisher's
// executor (for the library's streams, the node's): a stream read from
// another thread races with publish(). A stream keeps its buffer alive, not
// the publisher nor what publishes through it.
#pragma once

#include <barrel_p2p/task.hpp>
#include <barrel_p2p/detail/wake_signal.hpp>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

namespace barrel_p2p {

template <class T>
class event_publisher;

template <class T>
class event_stream {
 public:
  event_stream() = default;

  /// The next event, or nullopt once the publisher is gone or closed and the
  /// buffer is drained (or the waiting coroutine is cancelled). One reader
  /// at a time, on the publisher's executor; it does not hop there. The
  /// call holds the buffer: the stream object may be moved or destroyed
  /// while it waits.
  task<std::optional<T>> next() {
    auto st = state_;
    if (!st) co_return std::nullopt;
    while (st->queue.empty() && !st->closed)
      if (!co_await st->signal.wait() && !st->closed) co_return std::nullopt;  // cancelled
    if (st->queue.empty()) co_return std::nullopt;
    T ev = std::move(st->queue.front());
    st->queue.pop_front();
    co_return ev;
  }

  /// Drops the events buffered now (a reader that only needs to know that
  /// something changed, and re-reads the state once per burst). Publisher's
  /// executor.
  void discard_pending() {
    if (state_) state_->queue.clear();
  }

  /// Events buffered and not yet read. Publisher's executor.
  [[nodiscard]] std::size_t pending() const { return state_ ? state_->queue.size() : 0; }
  /// Events dropped because the buffer was full. Publisher's executor.
  [[nodiscard]] std::uint64_t dropped() const { return state_ ? state_->dropped : 0; }
  /// False for a default-constructed stream (next() returns nullopt at
  /// once). Any thread.
  [[nodiscard]] bool valid() const { return state_ != nullptr; }

 private:
  friend class event_publisher<T>;
  struct state {
    explicit state(executor e, std::size_t c) : signal(std::move(e)), capacity(c) {}
    wake_signal signal;
    std::size_t capacity;
    std::deque<T> queue;
    std::uint64_t dropped = 0;
    bool closed = false;
  };
  explicit event_stream(std::shared_ptr<state> s) : state_(std::move(s)) {}
  std::shared_ptr<state> state_;
};

/// Every member is called on `ex`, the executor its streams are read on.
template <class T>
class event_publisher {
 public:
  /// `ex`: where a waiting reader resumes when it has no executor of its own.
  explicit event_publisher(executor ex) : ex_(std::move(ex)) {}
  /// Closes every stream (readers drain, then get nullopt).
  ~event_publisher() { close(); }

  /// A new subscriber, seeing events published from now on; `capacity` 0
  /// counts as 1. The publisher holds it weakly: dropping the stream
  /// unsubscribes.
  [[nodiscard]] event_stream<T> subscribe(std::size_t capacity = 1024) {
    std::erase_if(subscribers_, [](const auto& w) { return w.expired(); });
    auto st = std::make_shared<typename event_stream<T>::state>(ex_, capacity == 0 ? 1 : capacity);
    subscribers_.push_back(st);
    return event_stream<T>(st);
  }

  /// Copies `ev` into each subscriber's buffer.
  void publish(const T& ev) {
    std::erase_if(subscribers_, [](const auto& w) { return w.expired(); });
    for (const auto& w : subscribers_) push(*w.lock(), T(ev));
  }
  /// The same, moving `ev` into the last subscriber's buffer (one
  /// subscriber, as a replica's inbox: no copy at all).
  void publish(T&& ev) {
    std::erase_if(subscribers_, [](const auto& w) { return w.expired(); });
    for (std::size_t i = 0; i < subscribers_.size(); ++i)
      push(*subscribers_[i].lock(), i + 1 == subscribers_.size() ? std::move(ev) : T(ev));
  }

  /// False when nobody would receive an event (publishers skip building it).
  [[nodiscard]] bool has_subscribers() {
    std::erase_if(subscribers_, [](const auto& w) { return w.expired(); });
    return !subscribers_.empty();
  }

  /// Ends every stream: readers get nullopt after draining.
  void close() {
    for (const auto& w : subscribers_)
      if (auto st = w.lock()) {
        st->closed = true;
        st->signal.close();
      }
    subscribers_.clear();
  }

 private:
  static void push(typename event_stream<T>::state& st, T&& ev) {
    if (st.queue.size() >= st.capacity) {
      st.queue.pop_front();
      ++st.dropped;
    }
    st.queue.push_back(std::move(ev));
    st.signal.notify();
  }

  executor ex_;
  std::vector<std::weak_ptr<typename event_stream<T>::state>> subscribers_;
};

}  // namespace barrel_p2p
