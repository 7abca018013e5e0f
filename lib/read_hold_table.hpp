// The holds a transport's users took on reading its peers
// (transport::hold_reading): a count per peer, and a callback when a peer's
// last hold is released so the transport resumes reading it. Shared by the
// TCP and the simulated transport.
#pragma once

#include <barrel_p2p/transport.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

namespace barrel_p2p::detail {

class read_hold_table {
 public:
  using release_handler = std::function<void(const std::string& peer_id)>;

  explicit read_hold_table(release_handler on_release)
      : state_(std::make_shared<state>(state{{}, std::move(on_release)})) {}
  read_hold_table(const read_hold_table&) = delete;
  read_hold_table& operator=(const read_hold_table&) = delete;

  // Returns true in `first` when this hold stopped the peer's reading.
  read_hold take(const std::string& peer_id, bool* first = nullptr) {
    auto& n = state_->counts[peer_id];
    if (first) *first = n == 0;
    ++n;
    // Weak: a hold released after the transport is gone calls nothing.
    std::weak_ptr<state> weak = state_;
    return read_hold(std::shared_ptr<void>(state_.get(), [weak, peer_id](void*) {
      auto s = weak.lock();
      if (!s) return;
      auto it = s->counts.find(peer_id);
      if (it == s->counts.end() || --it->second > 0) return;
      s->counts.erase(it);
      if (s->on_release) s->on_release(peer_id);
    }));
  }

  [[nodiscard]] bool held(const std::string& peer_id) const { return state_->counts.contains(peer_id); }
  /// Whether any peer is held (cheap: what most deliveries ask first).
  [[nodiscard]] bool any() const { return !state_->counts.empty(); }

 private:
  struct state {
    std::map<std::string, std::size_t> counts;  // only peers held now
    release_handler on_release;
  };
  std::shared_ptr<state> state_;
};

}  // namespace barrel_p2p::detail
