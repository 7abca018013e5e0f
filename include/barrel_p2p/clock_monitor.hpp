// How far this node's wall clock is from its peers', and what to do when it
// is too far ahead (docs/concepts/clocks.md, "Clock skew").
//
// Every write is stamped by the node's HLC, and a peer refuses any timestamp
// more than max_clock_offset ahead of its own wall clock. A node whose clock
// runs ahead of the cluster by more than that would acknowledge writes that
// every peer then drops; later, once its timestamps become admissible, they
// would beat writes made after them. So each node measures every active
// peer's offset continuously (Cristian's algorithm: a probe, the peer's wall
// clock in the answer, half the round trip added) and, under the default
// policy, refuses local writes while it is ahead of most of its measured
// active peers by more than the maximum offset. Reads are never refused.
//
// Probes travel on their own channel (detail/clock_messages.hpp): one to each new
// active peer at once, then one per peer every probe_interval. The estimate
// of a peer is the sample with the smallest round trip among its last few
// (NTP's clock filter: the least time in flight, the least room for
// asymmetric delay).
//
// Threading: everything runs on the node's executor (strand).
#pragma once

#include <barrel_p2p/hlc.hpp>
#include <barrel_p2p/hyparview.hpp>
#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/transport.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace barrel_p2p {

/// What a node does when its clock is ahead of the cluster.
enum class clock_skew_policy {
  refuse,  ///< local writes fail with clock_skew_error (the default)
  warn,    ///< writes go ahead; only the log and the metrics say so
};
[[nodiscard]] const char* to_string(clock_skew_policy p) noexcept;
/// "refuse" or "warn"; nullopt otherwise.
[[nodiscard]] std::optional<clock_skew_policy> clock_skew_policy_from_string(std::string_view s) noexcept;

struct clock_monitor_config {
  /// How often each active peer is probed (jittered by ±25 %).
  duration probe_interval{2'000};
  /// Samples kept per peer; the estimate is the one with the smallest round trip.
  std::size_t samples = 8;
  clock_skew_policy policy = clock_skew_policy::refuse;
  /// At most one warning per peer this often (a peer past half the maximum offset).
  duration warn_interval{60'000};
  std::uint64_t seed = 0;
  std::function<void(const std::string&)> log;
};

/// One measurement of a peer's clock.
struct clock_sample {
  /// The peer's wall clock minus ours: positive when the peer is ahead.
  duration offset{0};
  duration round_trip{0};
};

/// Cristian's estimate: the peer read `peer_wall_ms` about half a round trip
/// before we read `local_wall_ms` on receiving its answer.
[[nodiscard]] clock_sample measure_offset(std::uint64_t peer_wall_ms, std::uint64_t local_wall_ms,
                                          duration round_trip) noexcept;

/// The last `capacity` samples of one peer; best() is the one with the
/// smallest round trip (the latest among equals).
class clock_filter {
 public:
  explicit clock_filter(std::size_t capacity) : capacity_(capacity ? capacity : 1) {}
  void add(clock_sample s);
  [[nodiscard]] const std::optional<clock_sample>& best() const noexcept { return best_; }
  [[nodiscard]] std::size_t size() const noexcept { return samples_.size(); }

 private:
  std::size_t capacity_;
  std::deque<clock_sample> samples_;
  std::optional<clock_sample> best_;
};

/// Where this node's clock stands against its measured peers.
struct clock_verdict {
  std::size_t measured = 0;  ///< active peers with an estimate
  /// Of those, peers that would refuse this node's next timestamp: their
  /// clock is more than max_offset behind it (offset - stamp_lead < -max).
  std::size_t behind = 0;
  /// Peers whose clock is more than max_offset ahead of this node's wall
  /// clock: this node refuses their timestamps.
  std::size_t ahead = 0;
  /// The median of the peers' offsets (0 with none): negative when this
  /// node's wall clock is ahead of the cluster.
  duration median_offset{0};
  /// How far this node's HLC runs ahead of its wall clock (0 when it does not).
  duration stamp_lead{0};
  /// True when MOST measured peers would refuse this node's next timestamp.
  [[nodiscard]] bool ahead_of_cluster() const noexcept { return measured > 0 && 2 * behind > measured; }
  /// True when most measured peers are ahead by more than the maximum
  /// offset: this node drops their writes until its clock catches up.
  [[nodiscard]] bool behind_cluster() const noexcept { return measured > 0 && 2 * ahead > measured; }
  /// How far the next timestamp is ahead of the median peer clock.
  [[nodiscard]] duration lead_over_median() const noexcept { return stamp_lead - median_offset; }
  /// Counts one peer's offset into measured, behind and ahead (not the median).
  void count(duration offset, duration max_offset) noexcept {
    ++measured;
    if (offset - stamp_lead < -max_offset) ++behind;  // would refuse our next timestamp
    if (offset > max_offset) ++ahead;                 // we refuse theirs
  }
};
/// The verdict over peer offsets (peer clock minus this node's wall clock),
/// for a node whose HLC runs `stamp_lead` ahead of its wall clock.
[[nodiscard]] clock_verdict judge_offsets(std::span<const duration> offsets, duration max_offset,
                                          duration stamp_lead = duration{0});

/// Thrown by a local write (map put/remove, a new candidacy) while this
/// node's clock is ahead of the cluster under the refuse policy.
class clock_skew_error : public std::runtime_error {
 public:
  clock_skew_error(const std::string& what, duration ahead_by)
      : std::runtime_error(what), ahead_by_(ahead_by) {}
  /// How far the next write's timestamp is ahead of the median of the
  /// peers' clocks.
  [[nodiscard]] duration ahead_by() const noexcept { return ahead_by_; }

 private:
  duration ahead_by_;
};

/// A peer's estimate, as /status and the metrics show it.
struct peer_clock {
  std::string peer_id;
  duration offset{0};      ///< the peer's clock minus ours
  duration round_trip{0};  ///< of the sample the estimate comes from
  std::size_t samples = 0;
};

struct clock_monitor_counters {
  std::uint64_t probes_sent = 0;
  std::uint64_t answers_received = 0;
  std::uint64_t unexpected_answers = 0;  ///< answers to no probe of ours (late, repeated, forged)
  std::uint64_t bad_messages = 0;
  std::uint64_t writes_refused = 0;
  std::uint64_t warnings = 0;            ///< log lines about a peer past half the maximum offset
};

class clock_monitor {
 public:
  /// `clock` is the node's HLC: the next write's timestamp is what peers
  /// judge, and it may run ahead of the wall clock (an HLC never steps back,
  /// so after a clock that ran ahead is fixed, its timestamps stay ahead
  /// until real time catches up). Its maximum forward offset is the limit.
  clock_monitor(transport& net, hyparview& membership, scheduler& sched, const hlc_clock& clock,
                clock_monitor_config config = {});
  ~clock_monitor();
  clock_monitor(const clock_monitor&) = delete;
  clock_monitor& operator=(const clock_monitor&) = delete;

  /// Registers the clock channel handler and the membership listener and
  /// starts probing. Call once, on the node's executor.
  void start();
  /// Ends the probe loop; returns when it has.
  task<> stop();

  /// Every measured active peer, sorted by id. Node's executor.
  [[nodiscard]] std::vector<peer_clock> peers() const;
  /// The current verdict over the active peers' estimates, judged against
  /// the timestamp the next write would carry: each peer's offset minus how
  /// far this node's HLC runs ahead of its wall clock. Node's executor.
  [[nodiscard]] clock_verdict verdict() const;
  /// verdict().ahead_of_cluster(); with no measured active peer, the last
  /// verdict that had one stands (no evidence the clock came back).
  /// Node's executor.
  [[nodiscard]] bool ahead_of_cluster() const;
  /// True while local writes are refused: ahead of the cluster under the
  /// refuse policy. Node's executor.
  [[nodiscard]] bool refusing_writes() const;
  /// Throws clock_skew_error (and counts it) when refusing_writes(). Every
  /// local write calls it before it takes a timestamp. Node's executor.
  void check_writable();

  [[nodiscard]] const clock_monitor_config& config() const;
  [[nodiscard]] duration max_offset() const;
  [[nodiscard]] const clock_monitor_counters& counters() const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
