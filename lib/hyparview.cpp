// HyParView membership: the protocol (JOIN, FORWARD_JOIN, NEIGHBOR,
// DISCONNECT, SHUFFLE), its dials and its loops. The two views and the rules
// that keep them bounded are pure data in detail/hyparview_views.hpp: this
// file asks them what changes, then sends, dials and publishes.
#include "barrel_p2p/hyparview.hpp"
#include "barrel_p2p/detail/hyparview_views.hpp"
#include "barrel_p2p/log.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/detail/hyparview_messages.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "barrel_p2p/detail/wake_signal.hpp"
#include "token_bucket.hpp"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace barrel_p2p {

const char* to_string(membership_event::kind k) noexcept {
  switch (k) {
    case membership_event::kind::peer_up: return "peer_up";
    case membership_event::kind::peer_down: return "peer_down";
    case membership_event::kind::joined: return "joined";
    case membership_event::kind::left: return "left";
  }
  return "unknown";
}

struct hyparview::impl : std::enable_shared_from_this<hyparview::impl> {
  transport& net;
  scheduler& sched;
  hyparview_config config;
  logger log{config.log, net.self().id, "membership"};
  random_engine rng;
  hyparview_counters counters;
  detail::hyparview_views views{net.self().id, config, rng};
  std::vector<peer_address> contacts;
  std::map<std::string, duration> stray_since;  // open connections outside the active view
  // NEIGHBOR requests awaiting their reply, by peer: the answer, and the
  // signal that wakes the asking coroutine (reply, disconnect or timeout).
  struct pending_neighbor {
    std::optional<bool> answer;
    std::shared_ptr<wake_signal> wake;
  };
  std::map<std::string, pending_neighbor> neighbor_answers;
  std::vector<peer_descriptor> last_shuffle_sent;
  std::vector<peer_address> probe_contacts;
  std::vector<listener> listeners;
  std::function<bool(const std::string&)> keep_on_eviction;
  event_publisher<membership_event> events;
  task_group loops;
  // Doubling waits between failed attempts, reset by a success.
  struct retry_backoff {
    duration wait;
    duration next{0};  // no attempt before
    void done(bool succeeded, duration now, const hyparview_config& c) {
      if (succeeded) {
        wait = c.backoff_initial;
        return;
      }
      next = now + wait;
      wait = std::min(wait * 2, c.backoff_max);
    }
  };
  retry_backoff rejoin_backoff;         // an empty view: the contacts, one after the other
  retry_backoff contact_probe_backoff;  // reach_contact, for a view not full
  bool reaching_contact = false;
  // Abuse bounds (hyparview_config): evictions and JOIN forwards over all
  // peers; dials per peer that caused them, and dials in flight.
  detail::token_bucket eviction_budget;
  detail::token_bucket join_forward_budget;
  detail::per_peer_buckets dial_budgets{config.dials_per_peer_per_second, 4 * config.dials_per_peer_per_second};
  std::size_t dials_in_flight = 0;
  bool repairing = false;
  bool rejoining = false;
  bool ever_joined = false;
  bool started = false;
  bool leaving = false;

  impl(transport& n, scheduler& s, hyparview_config c)
      : net(n),
        sched(s),
        config(std::move(c)),
        rng(config.seed ? config.seed : std::random_device{}()),
        events(s.get_executor()),
        loops(s.get_executor()),
        rejoin_backoff{config.backoff_initial},
        contact_probe_backoff{config.backoff_initial},
        eviction_budget(config.evictions_per_second, 4 * config.evictions_per_second, s.now()),
        join_forward_budget(config.join_forwards_per_second, 4 * config.join_forwards_per_second, s.now()) {
    if (config.active_size == 0 || config.shuffle_interval <= duration{0} ||
        config.maintenance_interval <= duration{0} || config.backoff_initial <= duration{0} ||
        config.backoff_max < config.backoff_initial || config.jitter < 0 || config.jitter >= 1 ||
        !(config.evictions_per_second > 0) || !(config.join_forwards_per_second > 0) ||
        !(config.dials_per_peer_per_second > 0) || config.max_dials_in_flight == 0)
      throw std::invalid_argument(
          "hyparview_config: active_size > 0, positive intervals, backoff_max >= backoff_initial, jitter in [0, 1), "
          "positive abuse bounds");
  }

  const peer_descriptor& self() const { return net.self(); }

  // Every loop holds the state alive, so a hyparview destroyed while a loop
  // is suspended leaves that loop to wake, see it was cancelled, and end.
  static task<> holding(std::shared_ptr<impl>, task<> t) { co_await std::move(t); }
  void spawn(const char* name, task<> t) { loops.spawn(name, holding(shared_from_this(), std::move(t))); }

  // ---- views ---------------------------------------------------------------

  bool is_active(const std::string& id) const { return views.is_active(id); }

  void publish(membership_event ev) {
    for (const auto& l : listeners) l(ev);
    events.publish(ev);
  }

  template <class Message>
  void send(const std::string& peer, const Message& msg) {
    net.send(peer, channel::membership, encode(msg));
  }

  void add_active(const peer_descriptor& d) {
    if (!views.may_activate(d) || leaving) return;
    views.erase_passive(d.id);
    if (auto victim = views.make_room(keep_on_eviction, sched.now())) {
      ++counters.disconnects_sent;
      send(victim->id, disconnect_message{false});
      went_down(*victim, "evicted");
      // The victim closes the connection when it reads DISCONNECT; if it
      // does not, the stray-connection sweep does.
      stray_since[victim->id] = sched.now();
    }
    if (!views.add_active(d)) return;  // (cannot fail: checked, and room made)
    stray_since.erase(d.id);
    ++counters.peers_up;
    log("peer_up " + d.id + " " + d.address.to_string() + " (active view " + std::to_string(views.active().size()) +
        ")");
    publish({membership_event::kind::peer_up, d, {}});
    if (!ever_joined) {
      ever_joined = true;
      publish({membership_event::kind::joined, {}, {}});
    }
  }

  void remove_active(const std::string& id, const std::string& reason, bool to_passive) {
    if (auto d = views.remove_active(id, to_passive, sched.now())) went_down(*d, reason);
  }

  // `d` has left the active view: counted, logged, published.
  void went_down(const peer_descriptor& d, const std::string& reason) {
    ++counters.peers_down;
    log("peer_down " + d.id + " " + d.address.to_string() + " (" + reason + "; active view " +
        std::to_string(views.active().size()) + ")");
    publish({membership_event::kind::peer_down, d, reason});
  }

  void add_passive(const peer_descriptor& d, const std::vector<peer_descriptor>* prefer_evict = nullptr) {
    views.add_passive(d, sched.now(), prefer_evict);
  }

  // ---- messages ------------------------------------------------------------

  // False for bytes that are not a message at all: the transport cuts the
  // peer off. A message of a bad shape is counted and dropped.
  bool on_message(const std::string& from, const byte_slice& body) {
    std::string why;
    // A shuffle list is at most shuffle_length long; some slack for peers
    // configured differently.
    auto msg = parse_membership_message(body.bytes(), 4 * config.shuffle_length + 8, &why);
    if (!msg) {
      if (!decode_cbor(body.bytes())) return false;  // as any CBOR reader would refuse it
      if (!leaving) bad(from, why);
      return true;
    }
    if (!leaving) std::visit([&](auto& m) { on(from, m); }, *msg);
    return true;
  }

  void bad(const std::string& from, const std::string& why) {
    ++counters.bad_messages;
    log("dropped membership message from " + from + ": " + why);
  }

  void on(const std::string& from, const join_message& m) {
    if (m.node.id != from) return bad(from, "join: bad descriptor");
    ++counters.joins_received;
    // Already a neighbour: its walks went out when it first joined.
    if (is_active(from)) {
      ++counters.joins_not_forwarded;
      return;
    }
    // The joiner's passive view starts with a sample of ours, so that it
    // knows more of the overlay than its first neighbours before its first
    // shuffle: a partition in its first seconds must not leave it alone.
    // (A SHUFFLE_REPLY: a node of an earlier build takes it in too.)
    auto known = views.active();
    for (const auto& d : views.passive_descriptors()) known.push_back(d);
    if (auto seed = views.sample(known, config.shuffle_length, m.node.id); !seed.empty())
      send(from, shuffle_reply_message{std::move(seed)});
    if (!may_evict()) {
      add_passive(m.node);
    } else {
      add_active(m.node);
    }
    if (!join_forward_budget.take(sched.now())) {
      ++counters.joins_not_forwarded;
      return;
    }
    for (const auto& p : views.active())
      if (p.id != m.node.id) send(p.id, forward_join_message{m.node, config.arwl});
  }

  // True when taking one more peer into the active view is allowed: there
  // is room, or the eviction it forces is within the budget.
  bool may_evict() {
    if (views.active().size() < config.active_size) return true;
    if (eviction_budget.take(sched.now())) return true;
    ++counters.evictions_refused;
    return false;
  }

  // Whether a message from `from` may make this node dial: its per-peer
  // budget and the dials in flight. The caller holds a dial_slot meanwhile.
  bool may_dial_for(const std::string& from) {
    if (dials_in_flight >= config.max_dials_in_flight ||
        !dial_budgets.take(from, sched.now(), 1, [&](const std::string& p) { return is_active(p); })) {
      ++counters.dials_refused;
      return false;
    }
    return true;
  }
  struct dial_slot {
    std::size_t& in_flight;
    explicit dial_slot(std::size_t& n) : in_flight(n) { ++in_flight; }
    ~dial_slot() { --in_flight; }
    dial_slot(const dial_slot&) = delete;
    dial_slot& operator=(const dial_slot&) = delete;
  };

  void on(const std::string& from, const forward_join_message& m) {
    const auto& joiner = m.node;
    ++counters.forward_joins;
    if (joiner.id == self().id || is_active(joiner.id)) return;
    const auto ttl = std::min<std::uint64_t>(m.ttl, config.arwl);
    if (ttl == 0 || views.active().size() <= 1) return accept_joiner(from, joiner);
    if (ttl == config.prwl) add_passive(joiner);
    std::vector<peer_descriptor> next;
    for (const auto& p : views.active())
      if (p.id != from && p.id != joiner.id) next.push_back(p);
    if (next.empty()) return accept_joiner(from, joiner);
    send(views.pick(next).id, forward_join_message{joiner, ttl - 1});
  }

  // The end of a FORWARD_JOIN walk: this node becomes a neighbour of the
  // joiner. HIGH priority: the joiner must accept, its view is still small.
  // The joiner's address comes from `from`: a dial within its budget, or
  // nothing (not even a passive entry: that would be dialled later).
  void accept_joiner(const std::string& from, const peer_descriptor& joiner) {
    if (!may_dial_for(from)) return;
    spawn("accept_joiner", connect_joiner(joiner));
  }
  task<> connect_joiner(peer_descriptor joiner) {
    dial_slot slot(dials_in_flight);
    auto c = co_await net.connect(joiner.address);
    if (!c || c->id != joiner.id || leaving) co_return;
    add_active(*c);
    send(c->id, neighbor_message{self(), true});
  }

  void on(const std::string& from, const neighbor_message& m) {
    if (m.node.id != from) return bad(from, "neighbor: bad fields");
    ++counters.neighbor_requests;
    const bool ok = is_active(from) || views.active().size() < config.active_size || (m.high_priority && may_evict());
    if (ok) add_active(m.node);
    else ++counters.neighbor_rejected;
    send(from, neighbor_reply_message{ok});
    if (!ok) add_passive(m.node);
  }

  void on(const std::string& from, const neighbor_reply_message& m) {
    auto it = neighbor_answers.find(from);
    if (it != neighbor_answers.end()) {
      it->second.answer = m.accepted;
      it->second.wake->notify();
    }
  }

  void on(const std::string& from, const disconnect_message& m) {
    if (is_active(from)) remove_active(from, m.leaving ? "left" : "disconnect", !m.leaving);
    if (m.leaving) views.erase_passive(from);
    net.disconnect(from);
  }

  void on(const std::string& from, const shuffle_message& m) {
    ++counters.shuffles_received;
    if (m.origin.id == self().id) return;
    const auto ttl = std::min<std::uint64_t>(m.ttl, config.arwl);
    if (ttl > 1 && views.active().size() > 1) {
      std::vector<peer_descriptor> next;
      for (const auto& p : views.active())
        if (p.id != from && p.id != m.origin.id) next.push_back(p);
      if (!next.empty()) {
        auto fwd = m;
        fwd.ttl = ttl - 1;
        send(views.pick(next).id, fwd);
        return;
      }
    }
    // The walk ends here: answer the origin with as many passive entries,
    // then take in its list, evicting first what we sent.
    auto reply = views.sample(views.passive_descriptors(), m.nodes.size(), m.origin.id);
    // The origin's address comes from `from` (it forwarded the walk).
    if (may_dial_for(from)) spawn("shuffle_reply", send_shuffle_reply(m.origin, reply));
    for (const auto& d : m.nodes) add_passive(d, &reply);
  }

  task<> send_shuffle_reply(peer_descriptor origin, std::vector<peer_descriptor> reply) {
    dial_slot slot(dials_in_flight);
    auto c = co_await net.connect(origin.address);
    if (!c || c->id != origin.id || leaving) co_return;
    send(c->id, shuffle_reply_message{std::move(reply)});
  }

  void on(const std::string&, const shuffle_reply_message& m) {
    for (const auto& d : m.nodes) add_passive(d, &last_shuffle_sent);
  }

  // ---- transport events ----------------------------------------------------

  void on_connected(const peer_descriptor& peer, bool) {
    if (!is_active(peer.id)) stray_since[peer.id] = sched.now();
  }

  void on_disconnected(const std::string& peer, disconnect_reason why) {
    stray_since.erase(peer);
    if (auto it = neighbor_answers.find(peer); it != neighbor_answers.end()) {
      it->second.wake->notify();  // the asker finds no answer: refused
      neighbor_answers.erase(it);
    }
    if (is_active(peer)) {
      // Keep it in reserve only if it went away in an orderly way; a failed
      // peer goes to the back of the passive view with a backoff, so that a
      // partition can still heal through it later.
      remove_active(peer, std::string(to_string(why)), true);
      views.note_peer_failed(peer, sched.now());
    }
  }

  // ---- loops ---------------------------------------------------------------

  task<> maintenance_loop() {
    while (!leaving) {
      const bool slept = co_await sched.sleep(jittered(config.maintenance_interval, config.jitter, rng));
      if (!slept || leaving) co_return;
      const auto now = sched.now();
      for (auto it = stray_since.begin(); it != stray_since.end();) {
        if (is_active(it->first)) {
          it = stray_since.erase(it);
        } else if (now - it->second > config.stray_connection_grace) {
          auto id = it->first;
          it = stray_since.erase(it);
          net.disconnect(id);
        } else {
          ++it;
        }
      }
      views.expire_passive(now);
      if (views.active().size() < config.active_size && !repairing && !views.passive().empty()) {
        repairing = true;
        spawn("repair", repair());
      }
      if (views.active().empty() && !rejoining && !contacts.empty() && now >= rejoin_backoff.next) {
        rejoining = true;
        spawn("rejoin", rejoin());
      } else if (!views.active().empty() && views.active().size() < config.active_size && !repairing && !rejoining &&
                 !reaching_contact && now >= contact_probe_backoff.next &&
                 views.dialable(now).empty()) {
        // A view that is not full, with no passive peer to repair from: in
        // a cluster smaller than the active view, a long partition makes
        // each side drop the other's peers from its passive view
        // (passive_max_failures), and random promotion needs a full view.
        // A contact that is not a neighbour is the way back.
        std::vector<peer_address> unused;
        for (const auto& c : contacts)
          if (c != self().address &&
              std::none_of(views.active().begin(), views.active().end(), [&](const auto& d) { return d.address == c; }))
            unused.push_back(c);
        if (!unused.empty()) {
          reaching_contact = true;
          spawn("reach_contact", reach_contact(views.pick(unused)));
        }
      }
    }
  }

  // Its own backoff, not the rejoin's: a node left with no neighbour must
  // not wait for this one. Only a contact that took us in resets it (one
  // that is a neighbour already, under another address, does not: it
  // would be dialled again at once).
  task<> reach_contact(peer_address contact) {
    auto c = co_await net.connect(contact);
    if (leaving) co_return;  // the node may be gone: its transport and scheduler with it
    bool reached = false;
    if (c && c->id != self().id && !is_active(c->id)) reached = co_await promote(*c);
    if (leaving) co_return;
    contact_probe_backoff.done(reached, sched.now(), config);
    reaching_contact = false;
  }

  task<> rejoin() {
    for (const auto& c : std::vector<peer_address>(contacts)) {
      if (!views.active().empty() || leaving) break;
      co_await join_via(c);
    }
    if (leaving) co_return;  // the node may be gone: its transport and scheduler with it
    rejoin_backoff.done(!views.active().empty(), sched.now(), config);
    rejoining = false;
  }

  // Fills the active view from the passive view: dial a random candidate,
  // ask it to be a neighbour (HIGH priority when we have nobody).
  task<> repair() {
    std::size_t attempts = views.passive().size();
    while (views.active().size() < config.active_size && attempts-- > 0 && !leaving) {
      const auto now = sched.now();
      const auto candidates = views.dialable(now);
      if (candidates.empty()) break;
      const auto target = views.pick(candidates);
      const bool promoted = co_await promote(target);
      if (leaving) co_return;
      if (promoted) ++counters.promotions;
    }
    repairing = false;
  }

  task<bool> promote(const peer_descriptor& target, bool force = false) {
    auto c = co_await net.connect(target.address);
    if (leaving) co_return false;  // the node may be gone: its transport and scheduler with it
    if (!c || c->id != target.id) {
      views.note_dial_failed(target.id, sched.now());
      co_return false;
    }
    if (is_active(c->id)) co_return true;
    const bool high = force || views.active().empty();
    auto wake = std::make_shared<wake_signal>(sched.get_executor());
    // A promotion of the same peer still waiting ends now, as refused:
    // once replaced, nothing but its timeout could reach it.
    if (auto earlier = neighbor_answers.find(c->id); earlier != neighbor_answers.end()) earlier->second.wake->close();
    neighbor_answers[c->id] = pending_neighbor{std::nullopt, wake};
    send(c->id, neighbor_message{self(), high});
    // The reply, a disconnect or the timeout wakes us, whichever is first.
    spawn("neighbor_timeout", notify_after(sched, wake, config.neighbor_timeout));
    const bool woken = co_await wake->wait();
    wake->close();  // the timeout's notify, if still to come, goes nowhere
    if (leaving) co_return false;
    auto it = neighbor_answers.find(c->id);
    const bool ok = woken && it != neighbor_answers.end() && it->second.wake == wake &&
                    it->second.answer.value_or(false);
    if (it != neighbor_answers.end() && it->second.wake == wake) neighbor_answers.erase(it);
    if (ok) {
      add_active(*c);
    } else {
      views.postpone(target.id, sched.now() + config.shuffle_interval);  // full now; ask again later
    }
    co_return ok;
  }

  // The paper's protocol never replaces a healthy active peer, so two halves
  // of a healed partition, each with full views, would stay apart forever.
  // Now and then a node with a full view swaps one active peer for a random
  // passive one (HIGH priority: the target makes room too). The passive view
  // keeps peers from across a partition (with backoff) and the contacts, so
  // this is what joins the halves again. Costs a little active-view churn.
  void maybe_promote_randomly() {
    if (views.active().size() < config.active_size || repairing || config.random_promotion <= 0) return;
    if (std::uniform_real_distribution<double>(0, 1)(rng) >= config.random_promotion) return;
    const auto now = sched.now();
    for (const auto& c : contacts)
      if (std::none_of(views.passive().begin(), views.passive().end(), [&](const auto& e) { return e.desc.address == c; }) &&
          std::none_of(views.active().begin(), views.active().end(), [&](const auto& d) { return d.address == c; }))
        probe_contacts.push_back(c);
    const auto candidates = views.dialable(now);
    // One draw over passive candidates and unknown contacts alike.
    const auto total = candidates.size() + probe_contacts.size();
    if (total > 0) {
      ++counters.swaps;
      const auto i = std::uniform_int_distribution<std::size_t>(0, total - 1)(rng);
      if (i < candidates.size()) spawn("swap", swap_in(candidates[i]));
      else spawn("swap_contact", swap_in_contact(probe_contacts[i - candidates.size()]));
    }
    probe_contacts.clear();
  }
  task<> swap_in(peer_descriptor target) { co_await promote(target, true); }
  task<> swap_in_contact(peer_address contact) {
    auto c = co_await net.connect(contact);
    if (!leaving && c && c->id != self().id && !is_active(c->id)) co_await promote(*c, true);
  }

  task<> shuffle_loop() {
    while (!leaving) {
      const bool slept = co_await sched.sleep(jittered(config.shuffle_interval, config.jitter, rng));
      if (!slept || leaving) co_return;
      if (views.active().empty()) continue;
      std::vector<peer_descriptor> list{self()};
      for (auto& d : views.sample(views.active(), config.shuffle_active)) list.push_back(d);
      const auto room = config.shuffle_length > list.size() ? config.shuffle_length - list.size() : 0;
      for (auto& d : views.sample(views.passive_descriptors(), room)) list.push_back(d);
      last_shuffle_sent = list;
      maybe_promote_randomly();
      ++counters.shuffles_sent;
      send(views.pick(views.active()).id, shuffle_message{self(), config.arwl, list});
    }
  }

  task<bool> join_via(const peer_address& contact) {
    auto c = co_await net.connect(contact);
    if (!c || leaving) co_return false;
    if (c->id == self().id) co_return false;
    if (is_active(c->id)) co_return true;
    add_active(*c);
    send(c->id, join_message{self()});
    co_return true;
  }
};

hyparview::hyparview(transport& net, scheduler& sched, hyparview_config config)
    : impl_(std::make_shared<impl>(net, sched, std::move(config))) {}

hyparview::~hyparview() {
  // Loops may still be suspended: they hold the state and end on
  // cancellation. The transport must stop calling into it.
  impl_->leaving = true;
  if (impl_->started) {
    impl_->net.on_message(channel::membership, nullptr);
    impl_->net.on_connected(nullptr);
    impl_->net.on_disconnected(nullptr);
  }
  // A promote() waiting for a NEIGHBOR reply is parked in its signal, which
  // the state owns: closing hands it back to the executor, so the state is
  // not kept alive by its own waiter if the executor never runs again.
  for (auto& [id, pending] : impl_->neighbor_answers) pending.wake->close();
  impl_->loops.cancel();
}

void hyparview::start() {
  auto* m = impl_.get();
  if (m->started) return;
  m->started = true;
  m->net.on_message(channel::membership,
                    [m](const std::string& from, const byte_slice& body) { return m->on_message(from, body); });
  m->net.on_connected([m](const peer_descriptor& p, bool inbound) { m->on_connected(p, inbound); });
  m->net.on_disconnected([m](const std::string& p, disconnect_reason r) { m->on_disconnected(p, r); });
  m->spawn("maintenance", m->maintenance_loop());
  m->spawn("shuffle", m->shuffle_loop());
}

task<bool> hyparview::join(peer_address contact) {
  remember_contact(contact);
  const auto keep = impl_;  // the state outlives a hyparview destroyed while this dials
  co_return co_await keep->join_via(contact);
}

void hyparview::remember_contact(peer_address contact) {
  auto& c = impl_->contacts;
  if (std::find(c.begin(), c.end(), contact) == c.end()) c.push_back(std::move(contact));
}

task<> hyparview::leave() {
  auto* m = impl_.get();
  if (m->leaving) co_return;
  // From here on no peer is added and no message handled.
  m->leaving = true;
  for (const auto& p : m->views.active()) m->send(p.id, disconnect_message{true});
  // Give the DISCONNECTs a moment to leave before the connections close.
  co_await m->sched.sleep(duration{100});
  auto peers = m->views.active();
  for (const auto& p : peers) {
    m->remove_active(p.id, "left", false);
    m->net.disconnect(p.id);
  }
  for (const auto& id : m->net.connected_peers()) m->net.disconnect(id);
  co_await m->loops.stop();
  m->publish({membership_event::kind::left, {}, {}});
  m->events.close();
}

std::vector<peer_descriptor> hyparview::active_view() const { return impl_->views.active(); }
std::vector<peer_descriptor> hyparview::passive_view() const { return impl_->views.passive_descriptors(); }
bool hyparview::is_active(const std::string& id) const { return impl_->is_active(id); }
const peer_descriptor& hyparview::self() const { return impl_->self(); }
const hyparview_counters& hyparview::counters() const { return impl_->counters; }
event_stream<membership_event> hyparview::subscribe(std::size_t capacity) {
  return impl_->events.subscribe(capacity);
}
void hyparview::add_listener(listener l) { impl_->listeners.push_back(std::move(l)); }

void hyparview::set_eviction_preference(std::function<bool(const std::string&)> keep) {
  impl_->keep_on_eviction = std::move(keep);
}

}  // namespace barrel_p2p
