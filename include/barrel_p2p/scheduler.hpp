// Time and randomness for every component of a node.
//
// The protocol layers take their time from the node's scheduler:
// membership (shuffles, repair, backoff), broadcast (IHAVE flushes, graft
// timers), the replica host (anti-entropy, backpressure waits), the clock
// monitor, and above them maps, the registry, elections, placement,
// reminders and queries sleep through it or read now() from it; the HLC
// reads wall_ms(). The real scheduler uses steady timers and the system
// clock; the simulated one (sim_network.hpp) runs on virtual time, so a
// simulated ten minutes pass in seconds and a run is a pure function of
// its seed.
//
// Real sockets run on real time: the TCP transport (heartbeats, handshake
// and connect timeouts) reads std::chrono::steady_clock and arms steady
// timers itself, taking only the executor from the scheduler, so it holds
// no reference to it and can wind down after it is gone. The HTTP API
// reads the steady clock for its uptime, its idle timeouts are Beast's
// steady timers, and PUT /reminders adds in_ms to the system clock. Log
// lines are stamped from the system clock. None of these runs under the
// simulator, whose transport models failure detection on virtual time.
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

/// The layers use it on the node's executor. The real scheduler holds only
/// its executor and a start time, so any thread may call it; a simulated
/// one belongs to its sim_network, whose one thread makes every call.
/// The layers that use it hold it by reference: it must outlive them (the
/// node owns it and destroys it last).
class scheduler {
 public:
  virtual ~scheduler() = default;

  /// The executor every coroutine of the node runs on (the node's strand,
  /// or the simulation's executor). Any thread.
  [[nodiscard]] virtual executor get_executor() const = 0;
  /// Monotonic time (virtual under simulation).
  [[nodiscard]] virtual duration now() const = 0;
  /// Wall-clock milliseconds since the epoch, the HLC's physical source
  /// (virtual, plus the node's skew, under simulation).
  [[nodiscard]] virtual std::uint64_t wall_ms() const = 0;
  /// Suspends for `d`. Returns true when the time elapsed, false when the
  /// sleep was cancelled (Asio per-operation cancellation, e.g. a
  /// task_group stopping). The timer lives in the coroutine, not in the
  /// scheduler: a pending sleep needs only the execution context (or the
  /// sim_network) to outlive it. The caller resumes on its own executor.
  virtual task<bool> sleep(duration d) = 0;
};

/// Steady-timer scheduler on `ex` (the node passes its strand); wall time
/// from the system clock. `ex`'s execution context must outlive every
/// pending sleep.
[[nodiscard]] std::unique_ptr<scheduler> make_real_scheduler(executor ex);

/// A deterministic per-node generator, seeded from the node's config. Not
/// thread-safe: each layer keeps its own and uses it on the node's executor.
using random_engine = std::mt19937_64;

/// `base` scaled by a uniform factor in [1 - spread, 1 + spread]; timers
/// that fire on many nodes are jittered so they do not fire in step. Any
/// thread, with an `rng` no other thread uses at the same time.
[[nodiscard]] duration jittered(duration base, double spread, random_engine& rng);

}  // namespace barrel_p2p
