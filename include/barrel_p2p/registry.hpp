// Service registry: who serves X, cluster-wide (docs/concepts/registry.md).
//
// Each node registers the services it provides itself: (service name,
// endpoint) -> metadata, in an OR-Map gossiped by the replica driver under
// the instance `barrel_p2p.registry`. An honest node writes only its own
// entries; values whose writer is not the node their key names are dropped
// (members are trusted: a dishonest one can still name any writer). Freshness follows liveness:
//   * when a neighbour leaves, or fails (its connection closes or times
//     out and a dial to it fails too), the nodes next to it drop its
//     registrations and gossip a down notice, so every node drops them and
//     refuses them for an hour;
//   * a node that hears a down notice about itself (it is alive after all)
//     re-announces its registrations with fresh stamps, which is also how
//     they come back after a partition heals;
//   * registrations a broadcast missed are repaired by range reconciliation
//     (on connect and every anti-entropy round, one fingerprint message
//     when nothing differs);
//   * find() asks the overlay when this node knows no provider of a name:
//     the providers answer by re-announcing.
#pragma once

#include <barrel_p2p/event_stream.hpp>
#include <barrel_p2p/node.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace barrel_p2p {

/// One provider of a service, as this node knows it.
struct service_provider {
  std::string service;
  std::string node;      ///< the providing node's id
  std::string endpoint;  ///< what the provider registered (host:port, a URL...)
  json metadata;         ///< a JSON object (may be empty)
  std::uint64_t since_ms = 0;  ///< wall-clock ms when the provider first registered it

  friend bool operator==(const service_provider&, const service_provider&) = default;
};

/// A change of one provider, local or remote.
struct service_event {
  enum class kind { registered, deregistered };
  kind what = kind::registered;  ///< registered also when only its metadata changed
  service_provider provider;     ///< deregistered: the provider as it was
};

struct registry_counters {
  std::uint64_t registrations = 0;    ///< local register_service calls
  std::uint64_t deregistrations = 0;  ///< local deregister calls that removed something
  std::uint64_t rejected = 0;         ///< peer entries dropped: malformed, or written for another node
  std::uint64_t stale_dropped = 0;    ///< peer entries older than a down notice about their node
  std::uint64_t probes = 0;            ///< failed neighbours dialled to tell a crash from a closed link
  std::uint64_t down_notices_sent = 0;
  std::uint64_t down_notices_received = 0;
  std::uint64_t providers_dropped = 0;  ///< registrations dropped because their node went down
  std::uint64_t reasserted = 0;       ///< own registrations another member tombstoned, re-announced
  std::uint64_t retracted = 0;        ///< registrations in this node's name by an earlier process under its id
  std::uint64_t refutations = 0;      ///< down notices about this node answered by re-announcing
  std::uint64_t queries_sent = 0;     ///< find() misses asked of the overlay
  std::uint64_t queries_answered = 0; ///< queries this node answered as a provider
};

class registry : public node::attachment, public std::enable_shared_from_this<registry> {
 public:
  /// Limits on what register_service accepts (and on what peers send).
  static constexpr std::size_t max_service_bytes = 200;
  static constexpr std::size_t max_endpoint_bytes = 512;
  static constexpr std::size_t max_metadata_bytes = 4096;  ///< serialized JSON

  /// The node's registry, started on first use. Node's executor.
  static std::shared_ptr<registry> open(node& n);
  ~registry() override;

  /// Registers this node as a provider of `service` at `endpoint` (each
  /// 1 byte or more, no newline) with `metadata` (a JSON object), or
  /// updates the metadata of that registration. Applied here at once and
  /// gossiped. Throws std::invalid_argument on a bad argument and
  /// clock_skew_error while this node's clock is ahead of the cluster.
  /// Any executor.
  task<> register_service(std::string service, std::string endpoint, json metadata = json::object());
  /// Removes this node's registration of `service` at `endpoint` (a
  /// tombstone, gossiped). False when there was none. Any executor.
  task<bool> deregister(std::string service, std::string endpoint);
  /// Removes every registration of `service` by this node; how many. Any executor.
  task<std::size_t> deregister(std::string service);

  /// The providers of `service` this node knows, sorted by node then
  /// endpoint. Never waits. Node's executor.
  [[nodiscard]] std::vector<service_provider> lookup(const std::string& service) const;
  /// lookup(), but when this node knows no provider it asks the overlay
  /// (a query gossiped to every node; providers answer by re-announcing)
  /// and waits up to `timeout` for the first answer. Any executor.
  task<std::vector<service_provider>> find(std::string service, duration timeout = duration{2'000});
  /// Asks the overlay for the providers of `service` even when some are
  /// known here: every provider answers by re-announcing (at most once per
  /// half second per service), so a node that just joined learns them all.
  /// Asks at most once a second per service. Any executor.
  task<> ask(std::string service);
  /// Names with at least one provider, sorted. Node's executor.
  [[nodiscard]] std::vector<std::string> services() const;
  /// Every provider this node knows, sorted by service, node, endpoint. Node's executor.
  [[nodiscard]] std::vector<service_provider> providers() const;

  /// Changes of `service` (every service when empty) from now on. Bounded
  /// (drop-oldest, event_stream.hpp). Throws std::invalid_argument on a bad
  /// name. Node's executor.
  [[nodiscard]] event_stream<service_event> watch(const std::string& service = {}, std::size_t capacity = 1024);

  /// A copy of the counters. Node's executor.
  [[nodiscard]] registry_counters counters() const;

  task<> on_node_stop() override;
  void on_node_destroyed() noexcept override;

  struct impl;
  explicit registry(std::shared_ptr<impl> i);

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace barrel_p2p
