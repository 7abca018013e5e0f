// Leader election with fencing tokens (docs/concepts/leader-election.md).
//
// Campaign-and-notify over a replicated candidate set: every candidate
// publishes {priority} under (election name, node id) in an OR-Map gossiped
// by the replica driver; every node computes the leader of a name
// independently and identically (highest priority, then lowest node id). No
// votes, no quorum: within a connected cluster all nodes agree once the
// candidate set has converged.
//
// Fencing: each term gets a token minted from the HLC. A node taking a term
// first advances its clock past the name's replicated high-water mark, then
// packs a fresh timestamp; the new mark is published with broadcast_custom,
// merged by max everywhere and included in full sync. Within a connected
// cluster every new term's token is greater than every earlier one. Across a
// partition there is no such promise: a fenced resource must refuse tokens
// not greater than the last it accepted.
#pragma once

#include <barrel_p2p/event_stream.hpp>
#include <barrel_p2p/node.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace barrel_p2p {

struct campaign_options {
  /// Higher wins; ties go to the lowest node id.
  std::int64_t priority = 0;
};

enum class election_role { leader, follower };

struct leadership_event {
  enum class kind { elected, revoked };
  kind what;
  std::uint64_t fence = 0;  ///< elected: the new term's token
};

class elections;

/// One node's candidacy for one election. Destroying it (or resign())
/// withdraws the candidacy: a tombstone is gossiped. It holds the election
/// service alive (not the node); one object, used from one place at a time.
class campaign {
 public:
  /// Any thread: the withdrawal is posted to the node's strand, holding the
  /// service until it is done, so the node's execution context must still
  /// exist (once the node has stopped, the withdrawal does nothing).
  ~campaign();
  campaign(const campaign&) = delete;
  campaign& operator=(const campaign&) = delete;

  /// Fixed at lead(): any thread.
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// The role when lead() returned.
  [[nodiscard]] election_role initial_role() const noexcept { return initial_; }
  /// The token of the initial term when the initial role is leader.
  [[nodiscard]] std::optional<std::uint64_t> initial_fence() const noexcept { return initial_fence_; }
  /// Later transitions: elected{fence}, revoked. Bounded (drop-oldest).
  /// Ends (nullopt) after resign(), at node::stop() (a leader first gets
  /// revoked), and when the service or its node is destroyed. Await it on the node's executor: it reads an event_stream and
  /// does not hop.
  task<std::optional<leadership_event>> next() { return events_.next(); }
  /// Withdraws now (idempotent). Any executor: it hops onto the strand.
  task<> resign();

 private:
  friend class elections;
  campaign(std::shared_ptr<elections> owner, executor strand, std::string name, election_role initial,
           std::optional<std::uint64_t> fence, event_stream<leadership_event> events);
  std::shared_ptr<elections> owner_;
  executor strand_;
  std::string name_;
  election_role initial_;
  std::optional<std::uint64_t> initial_fence_;
  event_stream<leadership_event> events_;
  bool resigned_ = false;
};

/// The election service of one node (one replica instance for all names).
class elections : public node::attachment, public std::enable_shared_from_this<elections> {
 public:
  /// The node's service, started on first use (the same object until
  /// node::stop() detaches it). Node's executor.
  static std::shared_ptr<elections> open(node& n);
  ~elections() override;

  /// Campaigns for `name` (1-200 bytes, no newline). Returns the initial
  /// role and the stream of later transitions. Throws std::invalid_argument
  /// on a bad name or when this node already campaigns for it, and
  /// clock_skew_error while this node's clock is ahead of the cluster
  /// (clock_monitor.hpp); std::logic_error once the node is stopping. Any
  /// executor: it hops onto the strand. The campaign keeps this service
  /// alive.
  task<std::unique_ptr<campaign>> lead(std::string name, campaign_options options = {});
  /// Withdraws this node's candidacy for `name`, if any. Any executor.
  task<> resign(std::string name);

  /// The leader of `name` as this node sees it. These four read the
  /// service's state without a lock and do not hop: node's executor.
  [[nodiscard]] std::optional<std::string> leader(const std::string& name) const;
  [[nodiscard]] bool is_leader(const std::string& name) const;
  /// This node's token for `name` while it is the leader.
  [[nodiscard]] std::optional<std::uint64_t> fence(const std::string& name) const;
  /// The greatest token of `name` this node has seen (any node's).
  [[nodiscard]] std::uint64_t high_water_mark(const std::string& name) const;

  /// Called by the node: node::stop() stops the replica instance, revokes
  /// this node's leaderships, ends every campaign's stream and refuses later
  /// campaigns; ~node, while still attached, ends the streams too (as
  /// ~elections does).
  task<> on_node_stop() override;
  void on_node_destroyed() noexcept override;

  struct impl;
  explicit elections(std::shared_ptr<impl> i);

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
