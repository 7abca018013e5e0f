// The nemesis scenario of barrel-p2p-sim: seeded fault schedules over a
// cluster of real nodes on the simulated network, a workload of puts and
// removes recording what was acknowledged, and invariants checked after
// the final heal (docs/concepts/simulation.md).
#pragma once

#include <barrel_p2p/scheduler.hpp>

#include <cstddef>
#include <cstdint>
#include <set>

namespace barrel_p2p::sim {

struct nemesis_options {
  std::uint64_t first_seed = 1;
  std::uint64_t last_seed = 1;
  std::size_t nodes = 6;
  duration faulty{60'000};  ///< virtual time of faults and workload
  duration quiet{120'000};  ///< after the final heal: the longest wait for the invariants
  bool trace = false;       ///< print every fault and operation of each seed
  bool sabotage = false;    ///< the checker's self-test: lose one acknowledged write on purpose
  std::set<std::size_t> skip_faults;  ///< draws of the schedule not applied (by index)
  bool shrink = false;      ///< for a failing seed, drop faults while it still fails
};

/// Runs every seed; prints a JSON line per seed and the failing seeds.
/// Exit status: 0 when every seed held every invariant, 1 otherwise.
int run_nemesis(const nemesis_options& o);

}  // namespace barrel_p2p::sim
