// Sharded placement: which live node owns shard N (docs/concepts/placement.md).
//
// A named group splits its work into a fixed number of shards. The members
// of the group are the nodes that joined it; each one registers itself in
// the service registry (registry.hpp), so the member set follows liveness:
// a failed member drops out within the failure-detection time, a returning
// one comes back. Every node assigns each shard to the member with the
// highest rendezvous (highest-random-weight) score, weighted, so nodes with
// the same member set compute the same owners, and a join or a failure
// moves only the shards it must (about shards / members for one join).
//
// Member sets are eventually consistent: while a change spreads, two nodes
// can both believe they own a shard. Each acquisition therefore carries a
// fencing token from the HLC, greater than every token of that shard this
// node has heard of (the marks are gossiped and merged by max, as leader
// election does); work on a shard is fenced by refusing tokens not greater
// than the last one accepted.
#pragma once

#include <barrel_p2p/event_stream.hpp>
#include <barrel_p2p/node.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace barrel_p2p {

struct placement_options {
  /// Shards of the group: the same on every node (a member announcing
  /// another count is ignored and logged). 1 to 65,536.
  std::uint32_t shards = 64;
  /// This member's share: a member of weight 2 owns about twice the shards
  /// of one of weight 1. Greater than 0, at most 1,000,000.
  double weight = 1.0;
  /// False: this node observes (owner(), members()) and owns no shard.
  bool member = true;
};

struct shard_event {
  enum class kind { acquired, released };
  kind what = kind::acquired;
  std::uint32_t shard = 0;
  std::uint64_t fence = 0;  ///< acquired: the token of this ownership
};

struct placement_member {
  std::string node;
  double weight = 1.0;
  friend bool operator==(const placement_member&, const placement_member&) = default;
};

struct placement_counters {
  std::uint64_t acquired = 0;   ///< shard acquisitions by this node
  std::uint64_t released = 0;   ///< shards this node gave up
  std::uint64_t member_changes = 0;  ///< member-set changes seen
  std::uint64_t ignored_members = 0; ///< announcements with another shard count or a bad weight
  std::uint64_t marks_refused = 0;   ///< fencing marks beyond the clock's maximum offset
};

/// The rendezvous score of `node` for `shard` (weighted): the same on
/// every node and every build. Exposed for tools and tests.
[[nodiscard]] double rendezvous_score(std::string_view group, std::string_view node, std::uint32_t shard,
                                      double weight) noexcept;
/// The shard of `key` in a group of `shards` shards: a stable hash.
[[nodiscard]] std::uint32_t shard_of(std::string_view key, std::uint32_t shards) noexcept;

class placement : public node::attachment, public std::enable_shared_from_this<placement> {
 public:
  /// Joins group `group` (1-100 bytes, no newline) as a member, or opens it
  /// as an observer: the same object for the same group while open (later
  /// options are ignored). Asks the overlay for the members it does not
  /// know yet and returns once this node's view of the owners is computed.
  /// Throws std::invalid_argument on a bad name or option. Any executor.
  static task<std::shared_ptr<placement>> open(node& n, std::string group, placement_options options = {});
  ~placement() override;

  /// The group's name. Any thread: fixed when the group is opened.
  [[nodiscard]] const std::string& group() const;
  /// The group's shard count. Any thread: fixed when the group is opened.
  [[nodiscard]] std::uint32_t shards() const;
  /// The shard of `key` in this group. Any thread: a pure hash.
  [[nodiscard]] std::uint32_t shard_of(std::string_view key) const;

  /// The owner of `shard` as this node sees it; nullopt when the group has
  /// no member or `shard` is out of range. Node's executor.
  [[nodiscard]] std::optional<std::string> owner(std::uint32_t shard) const;
  /// The shards this node owns, ascending. Node's executor.
  [[nodiscard]] std::vector<std::uint32_t> owned_shards() const;
  /// The token of this node's ownership of `shard`, while it owns it.
  /// Node's executor.
  [[nodiscard]] std::optional<std::uint64_t> fence(std::uint32_t shard) const;
  /// The greatest token of `shard` this node has heard of (any node's).
  /// Node's executor.
  [[nodiscard]] std::uint64_t high_water_mark(std::uint32_t shard) const;
  /// The members this node knows, sorted by node id. Node's executor.
  [[nodiscard]] std::vector<placement_member> members() const;

  /// This node's acquisitions and releases from now on. Bounded
  /// (drop-oldest); a subscriber that sees dropped() grow re-reads
  /// owned_shards(). Node's executor.
  [[nodiscard]] event_stream<shard_event> subscribe(std::size_t capacity = 4096);

  /// Leaves the group (a member deregisters: its shards move to the
  /// others) and releases every shard here. Idempotent. Any executor.
  task<> close();

  /// A copy of the counters. Node's executor.
  [[nodiscard]] placement_counters counters() const;

  task<> on_node_stop() override;
  void on_node_destroyed() noexcept override;

  struct impl;
  explicit placement(std::shared_ptr<impl> i);

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
