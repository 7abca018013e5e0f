// A token bucket: `rate` tokens per second up to `burst`, starting full.
// Bounds what one peer (or all of them) can make this node do per second.
// Not thread-safe: owned by one component, used on the node's executor.
#pragma once

#include <barrel_p2p/scheduler.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <string>

namespace barrel_p2p::detail {

class token_bucket {
 public:
  token_bucket(double rate_per_second, double burst, duration now)
      : rate_(rate_per_second), burst_(burst), tokens_(burst), refilled_(now) {}

  /// Takes `n` tokens if there are that many at `now` (the scheduler's
  /// clock); false leaves the bucket as it was.
  bool take(duration now, double n = 1) {
    refill(now);
    if (tokens_ < n) return false;
    tokens_ -= n;
    return true;
  }

  /// Returns `n` tokens taken and not used (never past the burst).
  void give_back(double n) { tokens_ = std::min(burst_, tokens_ + n); }

  /// The tokens there are at `now` (whole ones), without taking any.
  double available(duration now) {
    refill(now);
    return tokens_;
  }

  /// New limits from `now` on (tokens so far refilled at the old rate; a
  /// smaller burst cuts them down). For budgets that scale with a size.
  void set_limits(duration now, double rate_per_second, double burst) {
    refill(now);
    rate_ = rate_per_second;
    burst_ = burst;
    tokens_ = std::min(tokens_, burst_);
  }

 private:
  void refill(duration now) {
    const auto elapsed_s = std::chrono::duration<double>(now - refilled_).count();
    if (elapsed_s > 0) tokens_ = std::min(burst_, tokens_ + elapsed_s * rate_);
    refilled_ = std::max(refilled_, now);
  }

  double rate_;
  double burst_;
  double tokens_;
  duration refilled_;
};

/// One bucket per peer, made full on first use. At most `max_peers` are
/// kept: past that, the buckets of peers `keep` rejects are dropped (a
/// fresh bucket is full, so dropping one never lowers a peer's budget
/// below what a newcomer gets).
class per_peer_buckets {
 public:
  per_peer_buckets(double rate_per_second, double burst, std::size_t max_peers = 1024)
      : rate_(rate_per_second), burst_(burst), max_peers_(max_peers) {}

  template <class Keep>
  bool take(const std::string& peer, duration now, double n, Keep&& keep) {
    if (buckets_.size() >= max_peers_ && !buckets_.contains(peer))
      std::erase_if(buckets_, [&](const auto& e) { return !keep(e.first); });
    return buckets_.try_emplace(peer, rate_, burst_, now).first->second.take(now, n);
  }
  void forget(const std::string& peer) { buckets_.erase(peer); }

 private:
  double rate_;
  double burst_;
  std::size_t max_peers_;
  std::map<std::string, token_bucket> buckets_;
};

}  // namespace barrel_p2p::detail
