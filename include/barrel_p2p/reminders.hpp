// Durable reminders: run a job at time T once, somewhere in the cluster,
// even when nodes fail (docs/concepts/reminders.md).
//
// Reminders live in a persisted replicated map (map.hpp) named
// `barrel_p2p.reminders`, which validates its values and reconciles by
// anti-entropy, so every node holds every reminder and a whole-cluster
// restart finds them on disk. Each reminder belongs to a shard of the
// placement group `barrel_p2p.reminders` (placement.hpp); the node owning
// that shard fires it when it is due, with the shard's fencing token.
//
// Delivery is at least once. A fired reminder stays scheduled until a
// handler calls complete() (a one-shot reminder is then removed, a
// periodic one moves to its next time); one not completed within
// redeliver_after fires again, and when its owner fails the next owner
// fires it with a greater token. A handler that must not act twice keeps
// the due times it has acted on per reminder (a redelivery repeats one); a
// resource the handler writes to refuses a token older than the last it
// accepted, so a stale owner's late write is fenced.
#pragma once

#include <barrel_p2p/event_stream.hpp>
#include <barrel_p2p/node.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace barrel_p2p {

struct reminder_options {
  /// Keep the reminders on disk (the node needs a data_dir). Only tests and
  /// the simulator turn this off.
  bool persist = true;
  /// Shards of the placement group that decides who fires what: the same
  /// on every node.
  std::uint32_t shards = 64;
  /// This node's share of the shards (placement_options::weight).
  double weight = 1.0;
  /// Due reminders are looked for this often (at most an hour).
  duration tick{100};
  /// A fired reminder not completed within this fires again (at most a day).
  duration redeliver_after{30'000};
};

/// A scheduled reminder.
struct reminder {
  std::string name;
  std::uint64_t at_ms = 0;     ///< wall-clock ms since the Unix epoch
  std::uint64_t every_ms = 0;  ///< 0: once; else it repeats this often
  json payload;
  friend bool operator==(const reminder&, const reminder&) = default;
};

/// A reminder fired on this node: handle it, then complete() it.
struct fired_reminder {
  std::string name;
  json payload;
  std::uint64_t due_ms = 0;    ///< the time it was scheduled for
  std::uint64_t every_ms = 0;
  std::uint32_t shard = 0;
  std::uint64_t fence = 0;     ///< the shard's token on this node: greater on a later owner
  std::uint32_t attempt = 1;   ///< deliveries of this due time on this node
};

struct reminder_counters {
  std::uint64_t scheduled = 0;  ///< local schedule calls
  std::uint64_t cancelled = 0;
  std::uint64_t fired = 0;      ///< deliveries on this node, redeliveries included
  std::uint64_t redelivered = 0;
  std::uint64_t completed = 0;
};

class reminders : public node::attachment, public std::enable_shared_from_this<reminders> {
 public:
  /// Limits on names and payloads (values from peers are held to them too).
  static constexpr std::size_t max_name_bytes = 256;
  static constexpr std::size_t max_payload_bytes = 64 * 1024;  ///< serialized JSON
  static constexpr std::uint64_t max_time_ms = std::uint64_t{1} << 44;      ///< at_ms below this (year 2527)
  static constexpr std::uint64_t max_every_ms = 366ull * 24 * 3600 * 1000;  ///< a period of at most a year

  /// The node's reminders: opens the map (recovering it from disk) and joins
  /// the placement group, so this node fires its share. Throws
  /// std::invalid_argument on a bad option and map_error when persist is
  /// asked for on a node without a data_dir. Any executor.
  static task<std::shared_ptr<reminders>> open(node& n, reminder_options options = {});
  ~reminders() override;

  /// Schedules `name` (1-256 bytes) at `at_ms`, repeating every `every_ms`
  /// when that is not 0; replaces a reminder of the same name. Returns once
  /// applied here and on disk. Throws std::invalid_argument on a bad
  /// argument, and what map::put throws. Any executor.
  task<> schedule(std::string name, std::uint64_t at_ms, json payload = nullptr, std::uint64_t every_ms = 0);
  /// Removes `name`; false when it was not scheduled. Any executor.
  task<bool> cancel(std::string name);
  /// Marks a delivery done: a one-shot reminder is removed, a periodic one
  /// moves to its first time after now (removed when that is out of range).
  /// Does nothing when the reminder was rescheduled (another time, period
  /// or payload) or cancelled since it fired. Throws what map::put throws;
  /// the delivery then fires again. Any executor.
  task<> complete(fired_reminder fired);

  /// The reminder `name`, or nullopt. Any thread.
  [[nodiscard]] std::optional<reminder> get(const std::string& name) const;
  /// Every reminder, sorted by name. Any thread.
  [[nodiscard]] std::vector<reminder> list() const;
  /// The shard of reminder `name`, and the node that fires it as this node
  /// sees it (nullopt while the group has no member). Node's executor.
  [[nodiscard]] std::uint32_t shard_of(const std::string& name) const;
  [[nodiscard]] std::optional<std::string> owner_of(const std::string& name) const;

  /// Reminders fired on this node from now on. Bounded (drop-oldest): a
  /// dropped delivery fires again after redeliver_after. Node's executor.
  [[nodiscard]] event_stream<fired_reminder> subscribe(std::size_t capacity = 1024);

  [[nodiscard]] reminder_counters counters() const;

  task<> on_node_stop() override;
  void on_node_destroyed() noexcept override;

  struct impl;
  explicit reminders(std::shared_ptr<impl> i);

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
