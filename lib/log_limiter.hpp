// At most one log line per period for one kind of event, counting the events
// it held back so the next line can say how many: a flood of bad input must
// not flood the log. Internal to the library (not installed).
#pragma once

#include <barrel_p2p/scheduler.hpp>

#include <cstdint>
#include <utility>

namespace barrel_p2p::detail {

class log_limiter {
 public:
  /// True when a line may be written at `now` (monotonic time), `period`
  /// after the last one; false counts one more held-back event.
  bool allow(duration now, duration period) {
    if (logged_ && now - last_ < period) {
      ++held_back_;
      return false;
    }
    logged_ = true;
    last_ = now;
    return true;
  }
  /// Events held back since the last line allowed; resets the count.
  std::uint64_t take_held_back() { return std::exchange(held_back_, 0); }

 private:
  duration last_{0};
  std::uint64_t held_back_ = 0;
  bool logged_ = false;
};

}  // namespace barrel_p2p::detail
