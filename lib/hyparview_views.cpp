#include "barrel_p2p/detail/hyparview_views.hpp"

#include <algorithm>

namespace barrel_p2p::detail {

std::vector<peer_descriptor> hyparview_views::passive_descriptors() const {
  std::vector<peer_descriptor> out;
  out.reserve(passive_.size());
  for (const auto& e : passive_) out.push_back(e.desc);
  return out;
}

bool hyparview_views::is_active(const std::string& id) const {
  return std::any_of(active_.begin(), active_.end(), [&](const auto& d) { return d.id == id; });
}

bool hyparview_views::is_passive(const std::string& id) const {
  return std::any_of(passive_.begin(), passive_.end(), [&](const auto& e) { return e.desc.id == id; });
}

passive_entry* hyparview_views::find_passive(const std::string& id) {
  auto it = std::find_if(passive_.begin(), passive_.end(), [&](const auto& e) { return e.desc.id == id; });
  return it == passive_.end() ? nullptr : &*it;
}

std::optional<peer_descriptor> hyparview_views::make_room(const std::function<bool(const std::string&)>& keep,
                                                          duration now) {
  if (!active_full() || active_.empty()) return std::nullopt;
  std::vector<peer_descriptor> expendable;
  if (keep)
    for (const auto& d : active_)
      if (!keep(d.id)) expendable.push_back(d);
  const auto victim = expendable.empty() ? pick(active_) : pick(expendable);
  return remove_active(victim.id, true, now);
}

bool hyparview_views::add_active(const peer_descriptor& d) {
  if (!may_activate(d) || active_full()) return false;
  erase_passive(d.id);
  active_.push_back(d);
  return true;
}

std::optional<peer_descriptor> hyparview_views::remove_active(const std::string& id, bool to_passive, duration now) {
  auto it = std::find_if(active_.begin(), active_.end(), [&](const auto& d) { return d.id == id; });
  if (it == active_.end()) return std::nullopt;
  auto d = *it;
  active_.erase(it);
  if (to_passive) add_passive(d, now);
  return d;
}

void hyparview_views::add_passive(const peer_descriptor& d, duration now,
                                  const std::vector<peer_descriptor>* prefer_evict) {
  if (d.id == self_ || is_active(d.id)) return;
  if (auto* e = find_passive(d.id)) {
    e->desc = d;
    e->refreshed = now;
    return;
  }
  if (config_.passive_size == 0) return;
  if (passive_.size() >= config_.passive_size) {
    std::size_t victim = std::uniform_int_distribution<std::size_t>(0, passive_.size() - 1)(rng_);
    if (prefer_evict)
      for (std::size_t i = 0; i < passive_.size(); ++i)
        if (std::any_of(prefer_evict->begin(), prefer_evict->end(),
                        [&](const auto& s) { return s.id == passive_[i].desc.id; })) {
          victim = i;
          break;
        }
    passive_.erase(passive_.begin() + static_cast<std::ptrdiff_t>(victim));
  }
  passive_.push_back(passive_entry{d, now, duration{0}, 0});
}

void hyparview_views::erase_passive(const std::string& id) {
  std::erase_if(passive_, [&](const auto& e) { return e.desc.id == id; });
}

void hyparview_views::expire_passive(duration now) {
  std::erase_if(passive_, [&](const auto& e) { return now - e.refreshed > config_.passive_max_age; });
}

void hyparview_views::note_peer_failed(const std::string& id, duration now) {
  if (auto* e = find_passive(id)) {
    e->failures = 1;
    e->next_try = now + config_.backoff_initial;
  }
}

void hyparview_views::note_dial_failed(const std::string& id, duration now) {
  auto* e = find_passive(id);
  if (!e) return;
  if (++e->failures >= config_.passive_max_failures) {
    erase_passive(id);
    return;
  }
  const auto backoff = config_.backoff_initial * (1u << std::min(e->failures, 6u));
  e->next_try = now + std::min(backoff, config_.backoff_max);
}

void hyparview_views::postpone(const std::string& id, duration until) {
  if (auto* e = find_passive(id)) e->next_try = until;
}

std::vector<peer_descriptor> hyparview_views::dialable(duration now) const {
  std::vector<peer_descriptor> out;
  for (const auto& e : passive_)
    if (e.next_try <= now) out.push_back(e.desc);
  return out;
}

std::vector<peer_descriptor> hyparview_views::sample(const std::vector<peer_descriptor>& from, std::size_t n,
                                                     const std::string& exclude) {
  std::vector<peer_descriptor> pool;
  for (const auto& d : from)
    if (d.id != exclude) pool.push_back(d);
  std::shuffle(pool.begin(), pool.end(), rng_);
  if (pool.size() > n) pool.resize(n);
  return pool;
}

}  // namespace barrel_p2p::detail
