// The HTTP routes of the service registry, placement groups and reminders
// (internal to barrel_p2p_http; docs/reference/http-api.md lists them).
//
//   GET    /services                    every service and its providers
//   GET    /services/{s}                 providers of s (?find=1 asks the overlay on a miss)
//   PUT    /services/{s}/{endpoint}      register this node (body: metadata object, or empty)
//   DELETE /services/{s}/{endpoint}
//   GET    /services[/{s}]/events        WebSocket: registered / deregistered
//   GET    /shards                       the exposed groups
//   GET    /shards/{g}                   members, the owner of every shard, this node's fences
//   GET    /shards/{g}/events            WebSocket: this node's acquired / released
//   GET    /reminders                    every reminder (?limit=)
//   GET    /reminders/{r}                one reminder
//   PUT    /reminders/{r}                body {"at": ms | "in_ms": ms, "every_ms"?, "payload"?}
//   DELETE /reminders/{r}
//   GET    /reminders/events             WebSocket: reminders fired on this node
//   GET    /members                      the member directory (?tag=key:value, repeatable)
//   GET    /members/{id}                 one member
//   GET    /members/events               WebSocket: joined / updated / left
#pragma once

#include "http_common.hpp"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace barrel_p2p {
class prometheus_writer;
class registry;
class placement;
class reminders;
class members;
}  // namespace barrel_p2p

namespace barrel_p2p::detail::http_surface {

/// Node's executor for everything.
class service_routes {
 public:
  void expose(std::shared_ptr<registry> r) { registry_ = std::move(r); }
  void expose(std::shared_ptr<placement> p);
  void expose(std::shared_ptr<reminders> r) { reminders_ = std::move(r); }
  void expose(std::shared_ptr<members> m) { members_ = std::move(m); }

  /// True when `path` (decoded target without the query) is one of these routes.
  [[nodiscard]] static bool owns(std::string_view path);
  /// The answer to a request for one of these routes.
  task<response> handle(const request& req, std::string_view path, std::string_view query);
  /// The event source of a WebSocket target, or nullopt with the refusal in
  /// `refusal` (404).
  /// `capacity`: events buffered before the oldest are dropped.
  std::optional<text_events> events(std::string_view path, std::size_t capacity, unsigned version,
                                    std::optional<response>& refusal);

  /// Counters for GET /status.
  [[nodiscard]] json status() const;
  /// The exposed consumers' counters and gauges for GET /metrics.
  void write_metrics(prometheus_writer& w, const std::string& node_id) const;

 private:
  std::shared_ptr<registry> registry_;
  std::map<std::string, std::shared_ptr<placement>> groups_;
  std::shared_ptr<reminders> reminders_;
  std::shared_ptr<members> members_;
};

}  // namespace barrel_p2p::detail::http_surface
