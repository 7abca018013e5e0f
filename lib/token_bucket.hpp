// A token bucket: `rate` tokens per second up to `burst`, starting full.
// Bounds what one peer (or all of them) can make this node do per second.
// Not thread-safe: owned by one component, used on the node's executor.
#pragma once

#include <barrel_p2p/scheduler.hpp>

#include <algorithm>
#include <chrono>

namespace barrel_p2p::detail {

class token_bucket {
 public:
  token_bucket(double rate_per_second, double burst, duration now)
      : rate_(rate_per_second), burst_(burst), tokens_(burst), refilled_(now) {}

  /// Takes `n` tokens if there are that many at `now` (the scheduler's
  /// clock); false leaves the bucket as it was.
  bool take(duration now, double n = 1) {
    const auto elapsed_s = std::chrono::duration<double>(now - refilled_).count();
    if (elapsed_s > 0) tokens_ = std::min(burst_, tokens_ + elapsed_s * rate_);
    refilled_ = std::max(refilled_, now);
    if (tokens_ < n) return false;
    tokens_ -= n;
    return true;
  }

 private:
  double rate_;
  double burst_;
  double tokens_;
  duration refilled_;
};

}  // namespace barrel_p2p::detail
