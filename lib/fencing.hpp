// Fencing tokens from the HLC, shared by leader election and placement.
#pragma once

#include "barrel_p2p/hlc.hpp"

#include <cstdint>

namespace barrel_p2p::detail {

// A token strictly greater than `floor` (the greatest token of the term or
// shard heard of so far): the clock is first moved past the floor, so the
// token is also a timestamp ordered after everything this node has seen.
// Marks are admissible timestamps, far below UINT64_MAX, so floor + 1 (for
// a clock that stepped back since the mark was admitted) never wraps.
inline std::uint64_t next_fence(hlc_clock& clock, std::uint64_t floor) {
  const auto floor_ts = hlc_timestamp::unpack(floor);
  const auto ts = clock.admissible(floor_ts) ? clock.update(floor_ts) : clock.now();
  const auto fence = ts.pack();
  return fence > floor ? fence : floor + 1;
}

}  // namespace barrel_p2p::detail
