// The member directory: every live node of the cluster with its address and
// tags, known on every node (docs/concepts/members.md).
//
// HyParView gives a node its neighbours only. The directory is built on the
// service registry (registry.hpp): each node that opens it registers itself
// as a provider of the service `barrel_p2p.members` at its cluster address,
// with its tags as metadata. So a member is listed while it is alive, and
// drops out everywhere when it leaves or fails (the registry's down
// notices), and comes back when it returns.
#pragma once

#include <barrel_p2p/event_stream.hpp>
#include <barrel_p2p/node.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace barrel_p2p {

/// Tags: short strings, e.g. {"role": "db", "zone": "eu-west-1a"}.
using member_tags = std::map<std::string, std::string>;

struct member {
  std::string id;
  std::string address;  ///< host:port of its cluster listener
  member_tags tags;
  std::uint64_t since_ms = 0;  ///< wall-clock ms when it first announced itself
  friend bool operator==(const member&, const member&) = default;
};

struct member_event {
  enum class kind { joined, updated, left };
  kind what = kind::joined;  ///< updated: its tags changed
  member who;                ///< left: the member as it was
};

class members : public node::attachment, public std::enable_shared_from_this<members> {
 public:
  /// Limits on tags (checked on set, and on what peers announce).
  static constexpr std::size_t max_tags = 32;
  static constexpr std::size_t max_tag_key_bytes = 64;
  static constexpr std::size_t max_tag_value_bytes = 256;
  // ... and all of them at most 4 KiB as JSON (registry metadata).

  /// The node's directory, announcing this node with `tags` (the same object
  /// for later calls, whose tags are ignored: use set_tags). Throws
  /// std::invalid_argument on tags over the limits. Any executor.
  static task<std::shared_ptr<members>> open(node& n, member_tags tags = {});
  ~members() override;

  /// Replaces this node's tags; gossiped. Throws std::invalid_argument on
  /// tags over the limits. Any executor.
  task<> set_tags(member_tags tags);

  /// The live members this node knows, sorted by id; with `having`, only
  /// those carrying every one of these tags with that value. Node's executor.
  [[nodiscard]] std::vector<member> list(const member_tags& having = {}) const;
  /// The live member `id`; nullopt when this node knows none. Node's
  /// executor (it reads the registry, as list() does).
  [[nodiscard]] std::optional<member> get(const std::string& id) const;

  /// Joins, tag updates and departures from now on. Bounded (drop-oldest);
  /// after a drop, re-read list(). Node's executor.
  [[nodiscard]] event_stream<member_event> watch(std::size_t capacity = 1024);

  task<> on_node_stop() override;
  void on_node_destroyed() noexcept override;

  struct impl;
  explicit members(std::shared_ptr<impl> i);

 private:
  std::shared_ptr<impl> impl_;
};

/// True when `tags` is within the limits above (the 4 KiB included).
[[nodiscard]] bool valid_member_tags(const member_tags& tags) noexcept;

}  // namespace barrel_p2p
