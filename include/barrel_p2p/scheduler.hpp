// Time and randomness for every component of a node.
//
// Nothing in the library reads a clock or starts a timer directly: heartbeats,
// shuffles, backoff, graft timers and anti-entropy all sleep through the
// node's scheduler. The real scheduler uses steady timers; the simulated one
// (sim_network.hpp) runs on virtual time, so a simulated ten minutes pass in
// seconds and a run is a pure function of its seed.
#pragma once

#include <barrel_p2p/task.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>

namespace barrel_p2p {

using duration = std::chrono::milliseconds;

/// `d` in seconds, for metrics and JSON.
[[nodiscard]] inline double to_seconds(duration d) noexcept { return std::chrono::duration<double>(d).count(); }

class scheduler {
 public:
  virtual ~scheduler() = default;

  /// The executor every coroutine of the node runs on.
  [[nodiscard]] virtual executor get_executor() const = 0;
  /// Monotonic time (virtual under simulation).
  [[nodiscard]] virtual duration now() const = 0;
  /// Wall-clock milliseconds since the epoch, the HLC's physical source.
  [[nodiscard]] virtual std::uint64_t wall_ms() const = 0;
  /// Suspends for `d`. Returns true when the time elapsed, false when the
  /// sleep was cancelled (Asio per-operation cancellation, e.g. a
  /// task_group stopping).
  virtual task<bool> sleep(duration d) = 0;
};

/// Steady-timer scheduler on `ex`; wall time from the system clock.
[[nodiscard]] std::unique_ptr<scheduler> make_real_scheduler(executor ex);

/// A deterministic per-node generator, seeded from the node's config.
using random_engine = std::mt19937_64;

/// `base` scaled by a uniform factor in [1 - spread, 1 + spread]; timers
/// that fire on many nodes are jittered so they do not fire in step.
[[nodiscard]] duration jittered(duration base, double spread, random_engine& rng);

}  // namespace barrel_p2p
