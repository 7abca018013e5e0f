#include "barrel_p2p/ormap.hpp"

#include <algorithm>

namespace barrel_p2p {

namespace {
// What the sweep drops, and what a prune on peer down drops: one test each
// for the one-step and the find-then-drop forms.
bool expired_tombstone(const entry& e, std::uint64_t cutoff_wall_ms) {
  const auto* t = std::get_if<tombstone>(&e);
  return t && t->hlc.wall_ms < cutoff_wall_ms;
}
bool value_by(const entry& e, const std::string& node) {
  const auto* v = std::get_if<value_entry>(&e);
  return v && v->dot.node == node;
}
}  // namespace

const hlc_timestamp& entry_hlc(const entry& e) noexcept {
  if (const auto* v = std::get_if<value_entry>(&e)) return v->dot.hlc;
  return std::get<tombstone>(e).hlc;
}

// The total order behind merge. Entries rank by HLC; at equal HLC a value
// ranks above a tombstone (a tombstone must be strictly newer to win), values
// then rank by node id. Two values with the same dot are the same write; should
// a faulty peer send a different payload under an existing dot, the payloads'
// encoded bytes decide so that replicas still agree.
bool entry_wins(const entry& incoming, const entry& current) {
  const auto& in_hlc = entry_hlc(incoming);
  const auto& cur_hlc = entry_hlc(current);
  if (in_hlc != cur_hlc) return in_hlc > cur_hlc;
  const auto* in_v = std::get_if<value_entry>(&incoming);
  const auto* cur_v = std::get_if<value_entry>(&current);
  if (!in_v || !cur_v) return in_v != nullptr && cur_v == nullptr;
  if (in_v->dot.node != cur_v->dot.node) return in_v->dot.node > cur_v->dot.node;
  if (in_v->payload == cur_v->payload) return false;
  // Same dot, different payloads: only a faulty peer does this. The encoded
  // bytes give a total order (json's own order has 1 == 1.0 and NaN).
  return json::to_cbor(cur_v->payload) < json::to_cbor(in_v->payload);
}

ormap ormap::add(const std::string& key, json payload, const std::string& node,
                 const hlc_timestamp& hlc) {
  ormap delta;
  delta.merge_entry(key, value_entry{std::move(payload), {node, hlc}});
  merge_entry(key, delta.entries_.begin()->second);
  return delta;
}

ormap ormap::remove(const std::string& key, const hlc_timestamp& hlc) {
  ormap delta;
  delta.merge_entry(key, tombstone{hlc});
  merge_entry(key, delta.entries_.begin()->second);
  return delta;
}

std::optional<json> ormap::get(const std::string& key) const {
  const auto* e = get_entry(key);
  if (!e) return std::nullopt;
  if (const auto* v = std::get_if<value_entry>(e)) return v->payload;
  return std::nullopt;
}

const entry* ormap::get_entry(const std::string& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<std::string> ormap::keys() const {
  std::vector<std::string> out;
  for (const auto& [k, e] : entries_)
    if (std::holds_alternative<value_entry>(e)) out.push_back(k);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::pair<std::string, json>> ormap::to_list() const {
  std::vector<std::pair<std::string, json>> out;
  for (const auto& [k, e] : entries_)
    if (const auto* v = std::get_if<value_entry>(&e)) out.emplace_back(k, v->payload);
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

bool ormap::is_empty() const { return live_ == 0; }

// Both overloads: `incoming` is copied or moved only when it wins.
template <class E>
ormap::merge_result ormap::merge_one(const std::string& key, E&& incoming) {
  auto [it, inserted] = entries_.try_emplace(key, std::forward<E>(incoming));  // untouched unless inserted
  if (inserted) {
    entered(it->first, it->second);
    return {true, false};
  }
  if (!entry_wins(incoming, it->second)) return {};
  entry next = std::forward<E>(incoming);  // a copy may throw: before the old entry is let go
  const bool had_value = std::holds_alternative<value_entry>(it->second);
  left(it->first, it->second);
  it->second = std::move(next);
  entered(it->first, it->second);
  return {true, had_value && std::holds_alternative<tombstone>(it->second)};
}

ormap::merge_result ormap::merge_entry(const std::string& key, entry&& incoming) {
  return merge_one(key, std::move(incoming));
}

ormap::merge_result ormap::merge_entry(const std::string& key, const entry& incoming) {
  return merge_one(key, incoming);
}

sync_item sync_item_of(const std::string& key, const entry& e) {
  if (const auto* v = std::get_if<value_entry>(&e)) return {v->dot.hlc.pack(), sync_key_id(key, v->dot.node)};
  return {std::get<tombstone>(e).hlc.pack(), sync_key_id(key, {})};
}

void ormap::track_sync_items() {
  if (tracking_.t) return;
  tracking_.t = std::make_unique<tracking>();
  for (const auto& [k, e] : entries_) track(k, e);
}

void ormap::entered(const std::string& key, const entry& e) {
  if (std::holds_alternative<value_entry>(e)) ++live_;
  track(key, e);
}

void ormap::left(const std::string& key, const entry& e) {
  if (std::holds_alternative<value_entry>(e)) --live_;
  untrack(key, e);
}

void ormap::track(const std::string& key, const entry& e) {
  if (!tracking_.t) return;
  const auto item = sync_item_of(key, e);
  if (!tracking_.t->index.insert(item, &key)) tracking_.t->collisions.emplace(item, &key);
}

void ormap::untrack(const std::string& key, const entry& e) {
  if (!tracking_.t) return;
  auto& t = *tracking_.t;
  const auto item = sync_item_of(key, e);
  if (t.index.find(item) != &key) {
    // Not the key the index names: one of the colliding keys.
    for (auto [it, last] = t.collisions.equal_range(item); it != last; ++it)
      if (it->second == &key) {
        t.collisions.erase(it);
        break;
      }
    return;
  }
  // The item stays while another key's current entry is the same item.
  if (auto other = t.collisions.find(item); other != t.collisions.end()) {
    t.index.set_ref(item, other->second);
    t.collisions.erase(other);
  } else {
    t.index.erase(item);
  }
}

const std::string* ormap::key_of(const sync_item& item) const {
  const auto* current = current_of(item);
  return current ? &current->first : nullptr;
}

const ormap::container::value_type* ormap::current_of(const sync_item& item) const {
  if (!tracking_.t) return nullptr;
  const auto* key = static_cast<const std::string*>(tracking_.t->index.find(item));
  if (!key) return nullptr;
  const auto e = entries_.find(*key);
  return e != entries_.end() && sync_item_of(e->first, e->second) == item ? &*e : nullptr;
}

std::vector<std::string> ormap::merge(const ormap& other) {
  std::vector<std::string> changed;
  for (const auto& [k, e] : other.entries_)
    if (merge_entry(k, e)) changed.push_back(k);
  return changed;
}

void ormap::absorb_clock(hlc_clock& clock) const {
  if (entries_.empty()) return;
  const auto newest = std::max_element(
      entries_.begin(), entries_.end(),
      [](const auto& a, const auto& b) { return entry_hlc(a.second) < entry_hlc(b.second); });
  clock.update(entry_hlc(newest->second));
}

std::size_t ormap::gc_tombstones(std::uint64_t cutoff_wall_ms) {
  return std::erase_if(entries_, [this, cutoff_wall_ms](const auto& kv) {
    if (!expired_tombstone(kv.second, cutoff_wall_ms)) return false;
    left(kv.first, kv.second);
    return true;
  });
}

std::vector<std::string> ormap::expired_tombstones(std::uint64_t cutoff_wall_ms) const {
  std::vector<std::string> out;
  for (const auto& [k, e] : entries_)
    if (expired_tombstone(e, cutoff_wall_ms)) out.push_back(k);
  return out;
}

bool ormap::gc_tombstone(const std::string& key, std::uint64_t cutoff_wall_ms) {
  auto it = entries_.find(key);
  if (it == entries_.end() || !expired_tombstone(it->second, cutoff_wall_ms)) return false;
  left(it->first, it->second);
  entries_.erase(it);
  return true;
}

std::vector<std::pair<std::string, dot>> ormap::values_by(const std::string& node) const {
  std::vector<std::pair<std::string, dot>> out;
  for (const auto& [k, e] : entries_)
    if (value_by(e, node)) out.emplace_back(k, std::get<value_entry>(e).dot);
  return out;
}

std::vector<std::pair<std::string, dot>> ormap::remove_values_by(const std::string& node) {
  std::vector<std::pair<std::string, dot>> removed;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (value_by(it->second, node)) {
      left(it->first, it->second);
      removed.emplace_back(it->first, std::move(std::get<value_entry>(it->second).dot));
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  return removed;
}

bool ormap::remove_value_if(const std::string& key, const dot& d) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  const auto* v = std::get_if<value_entry>(&it->second);
  if (!v || v->dot != d) return false;
  left(it->first, it->second);
  entries_.erase(it);
  return true;
}

}  // namespace barrel_p2p
