// Internal (detail/): shared by the library, its tests and fuzzers; not API.
//
// HyParView's two views as pure data: the active view (the peers this node
// keeps connections to) and the passive view (a reserve to repair it from),
// with the rules that keep them bounded and disjoint. No transport, no
// timers, no messages: the membership layer (lib/hyparview.cpp) asks this
// class what changes, then sends, dials and publishes. Time comes in as an
// argument; randomness from the generator it is given. Unit-tested on its
// own (test/hyparview_views_test.cpp).
#pragma once

#include <barrel_p2p/hyparview.hpp>
#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/transport.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace barrel_p2p::detail {

struct passive_entry {
  peer_descriptor desc;
  duration refreshed{0};  // last time a message vouched for it
  duration next_try{0};   // backoff after a failed dial
  unsigned failures = 0;
};

class hyparview_views {
 public:
  /// `config` and `rng` must outlive the views. Only the view sizes, the
  /// backoffs and the passive ageing of `config` are read.
  hyparview_views(std::string self_id, const hyparview_config& config, random_engine& rng)
      : self_(std::move(self_id)), config_(config), rng_(rng) {}

  [[nodiscard]] const std::vector<peer_descriptor>& active() const noexcept { return active_; }
  [[nodiscard]] const std::vector<passive_entry>& passive() const noexcept { return passive_; }
  [[nodiscard]] std::vector<peer_descriptor> passive_descriptors() const;
  [[nodiscard]] bool is_active(const std::string& id) const;
  [[nodiscard]] bool is_passive(const std::string& id) const;
  [[nodiscard]] bool active_full() const noexcept { return active_.size() >= config_.active_size; }

  // ---- the active view

  /// Whether `d` may join the active view at all: not this node, not there
  /// already.
  [[nodiscard]] bool may_activate(const peer_descriptor& d) const { return d.id != self_ && !is_active(d.id); }
  /// When the active view is full: takes out a random peer, among those
  /// `keep` does not ask to keep if there are any, moves it to the passive
  /// view (refreshed at `now`) and returns it. Nothing when there is room.
  std::optional<peer_descriptor> make_room(const std::function<bool(const std::string&)>& keep, duration now);
  /// Adds `d` (may_activate, and room made) and takes it out of the passive
  /// view. False when it may not.
  bool add_active(const peer_descriptor& d);
  /// Takes `id` out of the active view (into the passive one when
  /// `to_passive`, refreshed at `now`); what it held, or nothing.
  std::optional<peer_descriptor> remove_active(const std::string& id, bool to_passive, duration now);

  // ---- the passive view

  /// Adds or refreshes `d` (never this node nor an active peer). When full,
  /// an entry goes: the first one named in `prefer_evict` (what was just
  /// sent away in a shuffle: the peer has it now), else a random one.
  void add_passive(const peer_descriptor& d, duration now, const std::vector<peer_descriptor>* prefer_evict = nullptr);
  void erase_passive(const std::string& id);
  /// Drops entries nothing vouched for within passive_max_age.
  void expire_passive(duration now);
  /// A peer whose connection failed: one backoff before it is dialled.
  void note_peer_failed(const std::string& id, duration now);
  /// A dial that failed: a doubling backoff, and the entry dropped after
  /// passive_max_failures (shuffles keep refreshing a dead peer's entry, so
  /// ageing alone would never drop it).
  void note_dial_failed(const std::string& id, duration now);
  /// No dial to `id` before `until` (it refused: its view is full).
  void postpone(const std::string& id, duration until);
  /// The passive peers whose backoff is over.
  [[nodiscard]] std::vector<peer_descriptor> dialable(duration now) const;

  // ---- random choices

  /// Up to `n` of `from`, shuffled, without `exclude`.
  [[nodiscard]] std::vector<peer_descriptor> sample(const std::vector<peer_descriptor>& from, std::size_t n,
                                                    const std::string& exclude = {});
  /// One of `from` (not empty), uniformly.
  template <class T>
  [[nodiscard]] const T& pick(const std::vector<T>& from) {
    return from[std::uniform_int_distribution<std::size_t>(0, from.size() - 1)(rng_)];
  }

 private:
  passive_entry* find_passive(const std::string& id);

  std::string self_;
  const hyparview_config& config_;
  random_engine& rng_;
  std::vector<peer_descriptor> active_;
  std::vector<passive_entry> passive_;
};

}  // namespace barrel_p2p::detail
