// Internal (detail/): shared by the library and its tests; not API.
// A smoothed delay and its spread, as TCP's retransmission timer keeps them
// (RFC 6298: gains 1/8 and 1/4, a timeout of the mean plus four mean
// deviations), for timers that should follow the delays they wait for.
// Not thread-safe: owned by one component, used on the node's executor.
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>

namespace barrel_p2p::detail {

class delay_estimate {
 public:
  /// One observed delay, in milliseconds (negative ones count as 0).
  void sample(double ms) {
    ms = std::max(ms, 0.0);
    if (!mean_) {
      mean_ = ms;
      deviation_ = ms / 2;
      return;
    }
    deviation_ += (std::abs(*mean_ - ms) - deviation_) / 4;
    *mean_ += (ms - *mean_) / 8;
  }

  [[nodiscard]] bool known() const noexcept { return mean_.has_value(); }
  [[nodiscard]] double mean() const noexcept { return mean_.value_or(0); }

  /// The mean plus four deviations, within [low, high]; `start` before any
  /// sample.
  [[nodiscard]] double timeout(double start, double low, double high) const {
    return std::clamp(mean_ ? *mean_ + 4 * deviation_ : start, low, high);
  }

 private:
  std::optional<double> mean_;
  double deviation_ = 0;
};

}  // namespace barrel_p2p::detail
