#include "barrel_p2p/plumtree.hpp"

#include "barrel_p2p/plumtree_messages.hpp"
#include "barrel_p2p/task_group.hpp"

#include <deque>
#include <map>
#include <stdexcept>
#include <set>
#include <unordered_map>

namespace barrel_p2p {
namespace {

using message_id = broadcast_id;
using message_id_hash = broadcast_id_hash;

// The payload as it arrived (a slice of the received frame) or as its origin
// encoded it: the same bytes are forwarded, cached and delivered.
struct cached_message {
  std::string tag;
  byte_slice payload;
  std::uint64_t round = 0;
};

struct missing_message {
  std::deque<std::pair<std::string, std::uint64_t>> announcers;  // (peer, round), in arrival order
  duration deadline{0};
};

}  // namespace

struct plumtree::impl : std::enable_shared_from_this<plumtree::impl> {
  transport& net;
  hyparview& membership;
  scheduler& sched;
  plumtree_config config;
  plumtree_counters counters;
  std::set<std::string> eager, lazy;
  std::unordered_map<message_id, cached_message, message_id_hash> cache;
  std::deque<std::pair<duration, message_id>> cache_order;  // for expiry, oldest first
  std::unordered_map<message_id, missing_message, message_id_hash> missing;
  std::map<std::string, std::vector<announcement>> pending_ihave;  // peer -> announced ids
  std::size_t cache_bytes = 0;  // payload bytes held by the cache
  std::map<std::string, delivery_handler> subscribers;
  task_group loops;
  std::uint64_t next_seq;
  bool started = false;
  bool stopped = false;

  impl(transport& n, hyparview& m, scheduler& s, plumtree_config c)
      : net(n), membership(m), sched(s), config(std::move(c)), loops(s.get_executor()) {
    if (config.ihave_interval <= duration{0} || config.graft_timeout <= duration{0} ||
        config.graft_retry_timeout <= duration{0} || config.ihave_batch_max == 0 ||
        config.cache_max_messages == 0 || config.cache_max_bytes == 0)
      throw std::invalid_argument("plumtree_config: intervals must be positive, batch and cache sizes > 0");
    // Sequence numbers start from the wall clock so that a restarted node
    // does not reuse ids its peers still hold in their caches.
    random_engine rng(config.seed ? config.seed : std::random_device{}());
    next_seq = (sched.wall_ms() << 16) | (rng() & 0xffff);
  }

  const std::string& self() const { return net.self().id; }
  bool is_peer(const std::string& p) const { return eager.contains(p) || lazy.contains(p); }

  void log(const std::string& line) const {
    if (config.log) config.log(self() + ": " + line);
  }

  void to_eager(const std::string& p) {
    lazy.erase(p);
    eager.insert(p);
  }
  void to_lazy(const std::string& p) {
    eager.erase(p);
    lazy.insert(p);
  }

  void remember(const message_id& id, const std::string& tag, const byte_slice& payload, std::uint64_t round) {
    if (!cache.emplace(id, cached_message{tag, payload, round}).second) return;
    cache_bytes += payload.size();
    cache_order.emplace_back(sched.now(), id);
    missing.erase(id);
    while ((cache.size() > config.cache_max_messages || cache_bytes > config.cache_max_bytes) &&
           !cache_order.empty())
      forget_oldest();
    counters.cache_size = cache.size();
    counters.cache_bytes = cache_bytes;
    counters.missing = missing.size();
  }

  void forget_oldest() {
    if (auto it = cache.find(cache_order.front().second); it != cache.end()) {
      cache_bytes -= it->second.payload.size();
      cache.erase(it);
    }
    cache_order.pop_front();
  }

  // Pushes a message one hop further: whole to eager peers, announced to
  // lazy ones. The GOSSIP head is encoded once for all eager peers, and the
  // payload bytes are the ones received (or encoded at the origin).
  void push(const message_id& id, const std::string& tag, const byte_slice& payload, std::uint64_t round,
            const std::string& except) {
    message_body body;
    for (const auto& p : eager) {
      if (p == except) continue;
      if (!body) body = encode_gossip(id, tag, round, payload);
      if (net.send(p, channel::broadcast, body)) ++counters.gossip_sent;
    }
    for (const auto& p : lazy)
      if (p != except) pending_ihave[p].push_back({id, round});
  }

  void broadcast(const std::string& tag, byte_slice payload) {
    const message_id id{self(), next_seq++};
    ++counters.broadcasts;
    remember(id, tag, payload, 0);
    push(id, tag, payload, 1, {});
  }

  void bad(const std::string& from, const std::string& why) {
    ++counters.bad_messages;
    log("dropped broadcast message from " + from + ": " + why);
  }

  bool on_message(const std::string& from, const byte_slice& body) {
    if (stopped) return true;
    auto msg = parse_broadcast_message(body);
    if (!msg) {
      bad(from, "malformed");
      return true;  // dropped and counted; the connection stays
    }
    std::visit([&](auto& m) { on(from, m); }, *msg);
    return true;
  }

  void on(const std::string& from, gossip_message& msg) {
    ++counters.gossip_received;
    if (cache.contains(msg.id) || msg.id.origin == self()) {
      // A redundant edge of the tree: keep the sender for announcements only.
      ++counters.duplicates;
      if (eager.contains(from)) {
        to_lazy(from);
        ++counters.prune_sent;
        net.send(from, channel::broadcast, encode_prune());
      }
      return;
    }
    remember(msg.id, msg.tag, msg.payload, msg.round);
    if (is_peer(from)) to_eager(from);
    push(msg.id, msg.tag, msg.payload, msg.round + 1, from);
    deliver(msg.id, msg.tag, msg.payload, msg.round);
  }

  void deliver(const message_id& id, const std::string& tag, const byte_slice& payload, std::uint64_t hops) {
    auto it = subscribers.find(tag);
    if (it == subscribers.end()) return;  // relayed for others, not for us
    ++counters.delivered;
    try {
      it->second(tag, payload, id.origin, hops);
    } catch (const std::exception& ex) {
      log("subscriber for tag '" + tag + "' threw: " + ex.what());
    }
  }

  void on(const std::string& from, const ihave_message& msg) {
    const auto now = sched.now();
    for (const auto& a : msg.ids) {
      if (cache.contains(a.id) || a.id.origin == self()) continue;
      auto it = missing.find(a.id);
      if (it == missing.end()) {
        if (missing.size() >= config.max_missing) continue;
        it = missing.emplace(a.id, missing_message{{}, now + config.graft_timeout}).first;
      }
      it->second.announcers.emplace_back(from, a.round);
    }
    counters.missing = missing.size();
  }

  void on(const std::string& from, const graft_message& msg) {
    if (is_peer(from)) to_eager(from);
    auto it = cache.find(msg.id);
    if (it == cache.end()) return;  // expired: the grafter will ask someone else
    ++counters.gossip_sent;
    net.send(from, channel::broadcast, encode_gossip(msg.id, it->second.tag, it->second.round + 1, it->second.payload));
  }

  void on(const std::string& from, const prune_message&) {
    if (is_peer(from)) to_lazy(from);
  }

  void on_membership(const membership_event& ev) {
    if (ev.what == membership_event::kind::peer_up) {
      to_eager(ev.peer.id);  // new links start in the tree
    } else if (ev.what == membership_event::kind::peer_down) {
      eager.erase(ev.peer.id);
      lazy.erase(ev.peer.id);
      pending_ihave.erase(ev.peer.id);
      for (auto& [id, m] : missing)
        std::erase_if(m.announcers, [&](const auto& a) { return a.first == ev.peer.id; });
    }
  }

  // One loop does all of the timed work: flushing IHAVE batches, grafting
  // missing messages, expiring the cache.
  // Holds the state alive while suspended, so a plumtree destroyed without
  // stop() leaves the loop to wake, see it was cancelled, and end.
  static task<> timers_loop(std::shared_ptr<impl> self) {
    while (!self->stopped) {
      const bool elapsed = co_await self->sched.sleep(self->config.ihave_interval);
      if (!elapsed) break;
      self->flush_ihave();
      self->graft_missing();
      self->expire_cache();
    }
  }

  void flush_ihave() {
    for (auto& [peer, ids] : pending_ihave) {
      // Announce to every peer still connected, including one that has
      // turned eager since: it was lazy when these messages passed, so it
      // did not get them from us, and with several senders at once the tree
      // shifts under it; the announcement is its way to ask (the "many
      // senders at once" test in test/plumtree_sim_test.cpp loses messages
      // when these are skipped).
      if (!is_peer(peer)) continue;
      for (std::size_t i = 0; i < ids.size(); i += config.ihave_batch_max) {
        const auto last = std::min(ids.size(), i + config.ihave_batch_max);
        counters.ihave_ids_sent += last - i;
        ++counters.ihave_sent;
        net.send(peer, channel::broadcast, encode_ihave(ids, i, last));
      }
    }
    pending_ihave.clear();
  }

  void graft_missing() {
    const auto now = sched.now();
    for (auto it = missing.begin(); it != missing.end();) {
      auto& m = it->second;
      if (m.deadline > now) {
        ++it;
        continue;
      }
      // Ask the next announcer still connected; give up when none is left.
      while (!m.announcers.empty() && !is_peer(m.announcers.front().first)) m.announcers.pop_front();
      if (m.announcers.empty()) {
        it = missing.erase(it);
        continue;
      }
      auto [peer, round] = m.announcers.front();
      m.announcers.pop_front();
      to_eager(peer);
      ++counters.graft_sent;
      net.send(peer, channel::broadcast, encode_graft(it->first, round));
      m.deadline = now + config.graft_retry_timeout;
      ++it;
    }
    counters.missing = missing.size();
  }

  void expire_cache() {
    const auto now = sched.now();
    while (!cache_order.empty() && now - cache_order.front().first > config.cache_ttl) forget_oldest();
    counters.cache_size = cache.size();
    counters.cache_bytes = cache_bytes;
  }

};

plumtree::plumtree(transport& net, hyparview& membership, scheduler& sched, plumtree_config config)
    : impl_(std::make_shared<impl>(net, membership, sched, std::move(config))) {}

plumtree::~plumtree() {
  impl_->stopped = true;
  if (impl_->started) impl_->net.on_message(channel::broadcast, nullptr);
  impl_->loops.cancel();
}

void plumtree::start() {
  auto* m = impl_.get();
  if (m->started) return;
  m->started = true;
  m->net.on_message(channel::broadcast,
                    [m](const std::string& from, const byte_slice& body) { return m->on_message(from, body); });
  // The listener outlives nothing: membership is owned beside us and
  // destroyed after us by the node; a weak pointer guards the rest.
  std::weak_ptr<impl> weak = impl_;
  m->membership.add_listener([weak](const membership_event& ev) {
    if (auto p = weak.lock(); p && !p->stopped) p->on_membership(ev);
  });
  for (const auto& d : m->membership.active_view()) m->eager.insert(d.id);
  m->loops.spawn("plumtree_timers", impl::timers_loop(impl_));
}

task<> plumtree::stop() {
  impl_->stopped = true;
  co_await impl_->loops.stop();
}

void plumtree::broadcast(const std::string& tag, shared_bytes payload) {
  impl_->broadcast(tag, byte_slice(std::move(payload)));
}

void plumtree::subscribe(const std::string& tag, delivery_handler handler) {
  if (!handler) throw std::invalid_argument("plumtree: empty handler for tag '" + tag + "'");
  if (!impl_->subscribers.emplace(tag, std::move(handler)).second)
    throw std::invalid_argument("plumtree: tag '" + tag + "' already has a subscriber on this node");
}

void plumtree::unsubscribe(const std::string& tag) { impl_->subscribers.erase(tag); }

std::vector<std::string> plumtree::eager_peers() const { return {impl_->eager.begin(), impl_->eager.end()}; }
std::vector<std::string> plumtree::lazy_peers() const { return {impl_->lazy.begin(), impl_->lazy.end()}; }
const plumtree_counters& plumtree::counters() const { return impl_->counters; }

}  // namespace barrel_p2p
