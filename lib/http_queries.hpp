// The HTTP route of queries (internal to barrel_p2p_http; docs/reference/
// http-api.md):
//
//   POST /query/{name}   body {"payload"?, "nodes"?, "tags"?, "timeout_ms"?, "max_answers"?}
//                        answers when the query ends: {"query", "answers": [{"node", "payload", "ms"}]}
#pragma once

#include "http_common.hpp"

#include <memory>

namespace barrel_p2p {
class prometheus_writer;
class queries;
}  // namespace barrel_p2p

namespace barrel_p2p::detail::http_surface {

/// Node's executor for everything.
class query_routes {
 public:
  void expose(std::shared_ptr<queries> q) { queries_ = std::move(q); }

  /// True when `path` (decoded target without the query) is under /query.
  [[nodiscard]] static bool owns(std::string_view path);
  task<response> handle(const request& req, std::string_view path);
  /// The exposed queries' counters for GET /metrics.
  void write_metrics(prometheus_writer& w, const std::string& node_id) const;

 private:
  std::shared_ptr<queries> queries_;
};

/// The /ui page (lib/ui/index.html, compiled in by lib/ui/embed.py).
std::string_view ui_page();

}  // namespace barrel_p2p::detail::http_surface
