#include "barrel_p2p/plumtree.hpp"
#include "barrel_p2p/log.hpp"

#include "barrel_p2p/keyed_hash.hpp"
#include "barrel_p2p/detail/plumtree_messages.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "barrel_p2p/detail/wake_signal.hpp"
#include "barrel_p2p/detail/delay_estimate.hpp"
#include "token_bucket.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

namespace barrel_p2p {
namespace {

using message_id = broadcast_id;
using message_id_hash = broadcast_id_hash;

// The payload as it arrived (a slice of the received frame) or as its origin
// encoded it: the same bytes are forwarded, cached and delivered.
// Origins and tags, held once however many cached messages carry them (a
// cache of 100,000 messages from a few nodes would hold 100,000 copies of
// each): counted, so a name goes with its last message. Names come from
// peers: the keyed hash.
class name_pool {
 public:
  const std::string* hold(const std::string& name) {
    auto it = names_.try_emplace(name, 0).first;
    ++it->second;
    return &it->first;
  }
  void release(const std::string* name) {
    if (name == pinned_) return;
    if (auto it = names_.find(*name); it != names_.end() && --it->second == 0) names_.erase(it);
  }
  // A name held for the pool's life (this node's own id, the origin of
  // each of its broadcasts): found without a lookup, never released.
  const std::string* pin(const std::string& name) {
    pinned_ = hold(name);
    return pinned_;
  }

 private:
  std::unordered_map<std::string, std::size_t, keyed_string_hash> names_;
  const std::string* pinned_ = nullptr;
};

// A cached message's id, its origin in the name pool. Found by a
// broadcast_id too (the same hash and equality), without building one.
struct cached_id {
  const std::string* origin;
  std::uint64_t seq;
};
// Not noexcept, like the keyed hashers (keyed_hash.hpp): libstdc++ then
// keeps each node's hash code instead of running SipHash again for every
// node a lookup walks past (a tenth of a put's time in the micro bench).
// The node stays in the same 80-byte malloc chunk.
struct cached_id_hash {
  using is_transparent = void;
  std::size_t operator()(const cached_id& id) const { return broadcast_id_hash::of(*id.origin, id.seq); }
  std::size_t operator()(const broadcast_id& id) const { return broadcast_id_hash::of(id.origin, id.seq); }
};
struct cached_id_equal {
  using is_transparent = void;
  static std::pair<std::string_view, std::uint64_t> parts(const cached_id& id) noexcept { return {*id.origin, id.seq}; }
  static std::pair<std::string_view, std::uint64_t> parts(const broadcast_id& id) noexcept { return {id.origin, id.seq}; }
  template <class A, class B>
  bool operator()(const A& a, const B& b) const noexcept {
    return parts(a) == parts(b);
  }
};

// One per message for cache_ttl: 40 bytes with libstdc++ (names pooled,
// the round kept in 32 bits: a round past that would have crossed four
// billion hops).
struct cached_message {
  const std::string* tag;  // in the name pool
  byte_slice payload;
  duration received{0};     // when the first copy arrived (or was broadcast)
  std::uint32_t round = 0;  // saturated
  bool grafted = false;     // this node asked for it by GRAFT before it arrived
  // The peer it came from, as a slot of peer_slots (0: none or not
  // tracked), for optimization_mean_hops; in the padding.
  std::uint8_t sender = 0;
  // Grafted: ms from its first announcement to the graft's answer
  // (saturated; in the padding), for adaptive_graft_timeout.
  std::uint16_t answered_after_ms = 0;
};
// The fields above live in what was padding: one per cached message.
static_assert(sizeof(cached_message) ==
              sizeof(const std::string*) + sizeof(byte_slice) + sizeof(duration) + sizeof(std::uint64_t));

// Peers named by one byte (optimization_mean_hops): the sender of each
// cached message, and both ends of each pair whose savings are tracked. A
// slot is given on a peer's first use and freed when it leaves the view.
// A cached message received before its sender's slot was given names
// nobody, so a slot given again is not taken for the peer that left (only
// a message received in the very millisecond of the handover could be).
class peer_slots {
 public:
  std::uint8_t slot(const std::string& peer, duration now) {
    if (auto it = slots_.find(peer); it != slots_.end()) return it->second;
    auto free = std::find_if(holders_.begin(), holders_.end(), [](const holder& h) { return h.peer.empty(); });
    if (free == holders_.end()) {
      if (holders_.size() == 255) return 0;  // more than 255 peers at once: not tracked
      // Reserved whole on first use: name()'s pointers stay valid as slots are given.
      if (holders_.empty()) holders_.reserve(255);
      free = holders_.emplace(holders_.end());
    }
    free->peer = peer;
    free->since = now;
    const auto s = static_cast<std::uint8_t>(free - holders_.begin() + 1);
    slots_.emplace(peer, s);
    return s;
  }
  // 0 when the peer has no slot.
  std::uint8_t find(const std::string& peer) const {
    auto it = slots_.find(peer);
    return it == slots_.end() ? 0 : it->second;
  }
  // The peer in slot `s`, if it held the slot at `received`.
  const std::string* name(std::uint8_t s, duration received) const {
    if (s == 0 || s > holders_.size()) return nullptr;
    const auto& h = holders_[s - 1];
    return !h.peer.empty() && received >= h.since ? &h.peer : nullptr;
  }
  void release(const std::string& peer) {
    if (auto it = slots_.find(peer); it != slots_.end()) {
      holders_[it->second - 1].peer.clear();
      slots_.erase(it);
    }
  }

 private:
  struct holder {
    std::string peer;  // empty: free
    duration since{0};
  };
  std::vector<holder> holders_;  // slot s is holders_[s - 1]; grown on first use
  std::unordered_map<std::string, std::uint8_t> slots_;
};

// How many hops sooner a lazy peer offers the messages an eager peer
// brings (optimization_mean_hops).
struct path_saving {
  double mean = 0;
  std::uint32_t samples = 0;
};

// An eager peer that keeps sending copies this node already has.
struct duplicate_run {
  std::uint32_t count = 0;  // duplicates in a row
  duration since{0};        // when the first of them arrived
  // How late its duplicates trail the first copies (smoothed); none until
  // a duplicate of a cached message has been timed (0 ms is a real lag).
  std::optional<double> lag_ms;
  // Until then a first copy from the peer, lazy since this node pruned it,
  // does not bring it back: the copy was on its way before the PRUNE came.
  duration in_flight_until{0};
};

// One origin's departures from the shared tree: eager links over which its
// messages are announced instead of pushed, and the runs of duplicates of
// its messages on the others.
struct origin_tree {
  std::set<std::string> pruned;
  struct run {
    std::uint32_t count = 0;  // duplicates in a row
    duration since{0};        // when the first of them arrived
  };
  std::unordered_map<std::string, run> streak;  // peer -> its run of this origin's duplicates
};

struct missing_message {
  std::deque<std::pair<std::string, std::uint64_t>> announcers;  // (peer, round), in arrival order
  duration deadline{0};
  bool grafted = false;
  duration announced{0};  // when the first announcement came
  // Lazy peers it was fetched from (GRAFT then PRUNE): without
  // fetch_answers_join_tree their answer leaves the link lazy.
  std::vector<std::string> fetched_from;
};

}  // namespace

struct plumtree::impl : std::enable_shared_from_this<plumtree::impl> {
  transport& net;
  hyparview& membership;
  scheduler& sched;
  plumtree_config config;
  logger log{config.log, net.self().id, "broadcast"};
  plumtree_counters counters;
  std::set<std::string> eager, lazy;
  name_pool names;  // declared before the cache, whose keys point into it
  const std::string* own_name = names.pin(net.self().id);
  std::unordered_map<cached_id, cached_message, cached_id_hash, cached_id_equal> cache;
  // For expiry, oldest first: each entry points at its key in `cache`
  // (stable until erased, and only forget_oldest erases), 16 bytes instead
  // of a copy of the id.
  std::deque<std::pair<duration, const cached_id*>> cache_order;
  std::unordered_map<message_id, missing_message, message_id_hash> missing;
  std::map<std::string, std::vector<announcement>> pending_ihave;  // peer -> announced ids
  std::unordered_map<std::string, duplicate_run> duplicate_streak;  // eager peer -> its run of duplicates
  std::unordered_map<std::string, origin_tree, keyed_string_hash> origin_trees;  // origin -> its overrides
  std::size_t cache_bytes = 0;  // payload bytes held by the cache
  // Until then this node sits at a fresh cut of the tree (it lost an eager
  // link) and grafts announced messages at once instead of after
  // graft_timeout: it is the one node that knows the tree is cut, and its
  // graft repairs the cut before the timers of the nodes behind it fire.
  duration repair_until{0};
  duration next_optimization{0};  // optimisations are at least optimization_interval apart
  peer_slots slots;               // optimization_mean_hops only
  // (lazy announcer's slot << 8 | eager sender's slot) -> hops saved by the
  // announcer, while the first is lazy and the second eager: at most the
  // view's size squared.
  std::unordered_map<std::uint16_t, path_saving> savings;
  // How long after its first announcement a message's tree copy arrives
  // (adaptive_graft_timeout).
  detail::delay_estimate tree_delay;
  std::map<std::string, delivery_handler> subscribers;
  task_group loops;
  // The timers loop, when idle, waits here for work: an announcement queued,
  // a message missing, a first entry in the cache, or the expiry alarm.
  wake_signal work_ready;
  bool timers_idle = false;    // the loop waits on work_ready
  bool expiry_alarm = false;   // an alarm is set for the cache's next expiry
  random_engine rng;
  bool started = false;
  bool stopped = false;

  impl(transport& n, hyparview& m, scheduler& s, plumtree_config c)
      : net(n), membership(m), sched(s), config(std::move(c)), loops(s.get_executor()), work_ready(s.get_executor()) {
    if (config.ihave_interval <= duration{0} || config.graft_timeout <= duration{0} ||
        config.graft_retry_timeout <= duration{0} || config.ihave_batch_max == 0 ||
        config.cache_max_messages == 0 || config.cache_max_bytes == 0 ||
        config.graft_answer_bytes_per_second == 0 || config.graft_answer_burst_bytes == 0)
      throw std::invalid_argument(
          "plumtree_config: intervals must be positive, batch, cache and graft answer budgets > 0");
    if (config.max_origin_trees == 0) throw std::invalid_argument("plumtree_config: max_origin_trees must be > 0");
    if (!(config.optimization_mean_hops >= 0 && config.optimization_mean_hops <= 1000) || config.optimization_samples == 0)
      throw std::invalid_argument("plumtree_config: optimization_mean_hops must be in [0, 1000], optimization_samples > 0");
    if (config.graft_timeout_min <= duration{0} || config.graft_timeout_max < config.graft_timeout_min)
      throw std::invalid_argument("plumtree_config: graft_timeout_min must be > 0 and <= graft_timeout_max");
    counters.graft_wait_ms = static_cast<std::uint64_t>(config.graft_timeout.count());
    if (config.prune_after_duplicates == 0 || !(config.graft_jitter >= 0 && config.graft_jitter <= 100) ||
        !(config.prune_span_lags >= 0 && config.prune_span_lags <= 1000) ||
        !(config.origin_prune_span_lags >= 0 && config.origin_prune_span_lags <= 1000) ||
        config.repair_graft_timeout < duration{0} || config.repair_window < duration{0} ||
        config.prune_grace < duration{0} || config.prune_grace > duration{3'600'000} || !(config.congested_fill > 0 && config.congested_fill <= 1) ||
        !(config.write_room_fill > 0 && config.write_room_fill <= config.congested_fill) ||
        config.slow_peer_after <= duration{0})
      throw std::invalid_argument(
          "plumtree_config: prune_after_duplicates must be > 0, graft_jitter in [0, 100], prune_span_lags and "
          "origin_prune_span_lags in [0, 1000], repair times >= 0, prune_grace in [0, 1 h], congested_fill in (0, 1], write_room_fill in (0, congested_fill], "
          "slow_peer_after > 0");
    rng.seed(config.seed ? config.seed : std::random_device{}());
  }

  // A broadcast's sequence number is unpredictable, not a counter: a member
  // that saw one of this node's ids could otherwise send messages under the
  // next ones first, and every node would drop the real ones as duplicates.
  // 64 pseudorandom bits also keep a restarted node from reusing ids its
  // peers still cache. Unseeded, each id is SipHash (a pseudorandom
  // function) of a counter under a key read from the OS once: unpredictable
  // without the key, however many ids one has seen (reading the OS for
  // every id instead cost ~1.5 us per put in the micro bench). A seeded
  // node (the simulator) draws them from its generator, to stay
  // reproducible.
  std::uint64_t fresh_seq() { return config.seed ? rng() : siphash24(id_key, id_counter++); }
  siphash_key id_key = random_siphash_key();
  std::uint64_t id_counter = 0;

  const std::string& self() const { return net.self().id; }
  bool is_peer(const std::string& p) const { return eager.contains(p) || lazy.contains(p); }

  void to_eager(const std::string& p) {
    // Back in the tree: a grace from an earlier prune no longer applies.
    if (lazy.erase(p) != 0) {
      if (auto run = duplicate_streak.find(p); run != duplicate_streak.end()) run->second.in_flight_until = duration{0};
      forget_savings(p);
    }
    eager.insert(p);
  }
  void to_lazy(const std::string& p) {
    if (eager.erase(p) != 0) forget_savings(p);
    lazy.insert(p);
    // A run counts duplicates in a row while eager: if the link is grafted
    // again, it starts a new run (its lag still describes the path).
    if (auto run = duplicate_streak.find(p); run != duplicate_streak.end()) run->second.count = 0;
    edit_trees([&](origin_tree& t) { t.streak.erase(p); });
  }

  // Caches a received message; returns how it came: after this node's
  // GRAFT for it or not, and whether `from` is a peer it was fetched from.
  struct receipt {
    bool grafted = false;
    bool fetched_from_sender = false;
  };
  // `was_missing` is the id's entry in the missing table, or its end.
  receipt remember(decltype(missing)::iterator was_missing, const message_id& id, const std::string& tag,
                   const byte_slice& payload, std::uint64_t round, const std::string& from) {
    bool grafted = false;
    bool fetched_from_sender = false;
    duration since_announced{0};
    if (was_missing != missing.end()) {
      grafted = was_missing->second.grafted;
      const auto& fetched = was_missing->second.fetched_from;
      fetched_from_sender = std::find(fetched.begin(), fetched.end(), from) != fetched.end();
      since_announced = sched.now() - was_missing->second.announced;
      // The tree's copy, announced first: how far it trails announcements.
      // After a graft the copy may be its answer: no sample (Karn).
      if (!grafted) tree_delay.sample(static_cast<double>(since_announced.count()));
      missing.erase(was_missing);
      counters.missing = missing.size();
    }
    if (!cache.contains(id)) {
      const std::uint8_t sender = config.optimization_mean_hops > 0 && is_peer(from) ? slots.slot(from, sched.now()) : 0;
      cache_message(names.hold(id.origin), id.seq, tag, payload, round, grafted, since_announced, sender);
    }
    return {grafted, fetched_from_sender};
  }

  // Whether the link a first copy came over joins the tree. In the paper it
  // always does. Here it does not when the optimisation has just taken it
  // out for a shorter path (until 2026-12-03 this undid the swap at once),
  // nor, with options off by default, when the copy answers a fetch (the
  // PRUNE sent with that GRAFT took the link out on the far side) or was
  // pushed before this node's PRUNE reached the peer (prune_grace).
  bool joins_tree(const std::string& from, const receipt& how, bool swapped) const {
    if (!is_peer(from) || swapped) return false;
    if (how.fetched_from_sender && !config.fetch_answers_join_tree) return false;
    if (!lazy.contains(from)) return true;  // eager already
    auto run = duplicate_streak.find(from);
    return run == duplicate_streak.end() || sched.now() >= run->second.in_flight_until;
  }

  // Inserts a message into the cache. `origin` is held in the name pool for
  // the entry (released with it, or here when nothing is inserted). A
  // node's own broadcasts come here directly: a fresh id can be neither
  // missing nor cached, and its origin is the pinned own name.
  void cache_message(const std::string* origin, std::uint64_t seq, const std::string& tag, const byte_slice& payload,
                     std::uint64_t round, bool grafted, duration since_announced, std::uint8_t sender = 0) {
    const auto saturated = static_cast<std::uint32_t>(std::min<std::uint64_t>(round, UINT32_MAX));
    const std::string* pooled_tag = nullptr;
    decltype(cache)::iterator entry;
    bool inserted = false;
    try {
      pooled_tag = names.hold(tag);
      const auto answered_after = static_cast<std::uint16_t>(
          std::clamp<duration::rep>(since_announced.count(), 0, std::numeric_limits<std::uint16_t>::max()));
      std::tie(entry, inserted) = cache.emplace(
          cached_id{origin, seq}, cached_message{pooled_tag, payload, sched.now(), saturated, grafted, sender, answered_after});
    } catch (...) {  // allocation failure: the names are not held by anything
      names.release(origin);
      if (pooled_tag) names.release(pooled_tag);
      throw;
    }
    if (!inserted) {  // an own id drawn twice (64 pseudorandom bits): the first copy stays
      names.release(origin);
      names.release(pooled_tag);
      return;
    }
    if (cache_order.empty()) wake_timers();
    cache_bytes += payload.size();
    cache_order.emplace_back(sched.now(), &entry->first);
    while ((cache.size() > config.cache_max_messages || cache_bytes > config.cache_max_bytes) &&
           !cache_order.empty())
      forget_oldest();
    counters.cache_size = cache.size();
    counters.cache_bytes = cache_bytes;
  }

  void forget_oldest() {
    if (auto it = cache.find(*cache_order.front().second); it != cache.end()) {
      cache_bytes -= it->second.payload.size();
      const auto origin = it->first.origin;
      const auto tag = it->second.tag;
      cache.erase(it);
      names.release(origin);
      names.release(tag);
    }
    cache_order.pop_front();
  }

  // Pushes a message one hop further: whole to eager peers, announced to
  // lazy ones. The GOSSIP head is encoded once for all eager peers, and the
  // payload bytes are the ones received (or encoded at the origin).
  // `everyone`: to lazy peers too (a message that came by GRAFT: the tree
  // is broken around here, and announcing would cost each further node a
  // graft timeout).
  void push(const message_id& id, const std::string& tag, const byte_slice& payload, std::uint64_t round,
            const std::string& except, bool everyone = false) {
    message_body body;
    const auto* tree = everyone ? nullptr : find_tree(id.origin);
    auto send_to = [&](const std::string& p) {
      if (congested(p)) {
        ++counters.congested_announcements;
        announce(p, id, round);
        return;
      }
      if (!body) body = encode_gossip(id, tag, round, payload);
      if (net.send(p, channel::broadcast, body)) ++counters.gossip_sent;
    };
    // The origin has the message: nothing goes back to it.
    for (const auto& p : eager) {
      if (p == except || p == id.origin) continue;
      if (tree && tree->pruned.contains(p)) announce(p, id, round);
      else send_to(p);
    }
    for (const auto& p : lazy) {
      if (p == except || p == id.origin) continue;
      if (everyone) send_to(p);
      else announce(p, id, round);
    }
  }

  void announce(const std::string& p, const message_id& id, std::uint64_t round) {
    if (pending_ihave.empty()) wake_timers();
    pending_ihave[p].push_back({id, round});
  }

  // The send queue to `p` is over congested_fill: payloads wait (as
  // announcements) so that it never fills up and drops.
  bool congested(const std::string& p) const {
    const auto queue = net.send_queue(p);
    return queue && queue->fill() > config.congested_fill;
  }

  // The queues a local write waits for: its eager peers' (not those
  // pruned from this node's own tree: they get its writes as
  // announcements), except a peer's whose write in progress has lasted
  // slow_peer_after. `f` returns false to stop.
  template <class F>
  void for_each_write_queue(const F& f) const {
    const auto* own = find_tree(self());
    for (const auto& p : eager) {
      if (own && own->pruned.contains(p)) continue;
      auto queue = net.send_queue(p);
      if (queue && queue->blocked_for < config.slow_peer_after && !f(*queue)) return;
    }
  }

  bool room_for_writes(std::size_t admitted) const {
    bool room = true;
    for_each_write_queue([&](send_queue_state queue) {
      // Admitted writes are not in the queue yet: counted as frames of
      // the queue's average size, so large values bind on bytes too.
      if (queue.frames > 0) queue.bytes += admitted * (queue.bytes / queue.frames);
      queue.frames += admitted;
      room = queue.fill() <= config.write_room_fill;
      return room;
    });
    return room;
  }

  duration write_room_recheck() const {
    auto soonest = config.slow_peer_after;
    for_each_write_queue([&](const send_queue_state& queue) {
      soonest = std::min<duration>(soonest, config.slow_peer_after - queue.blocked_for);
      return true;
    });
    return std::max(soonest, duration{1});
  }

  void broadcast(const std::string& tag, byte_slice payload) {
    const message_id id{self(), fresh_seq()};
    ++counters.broadcasts;
    cache_message(own_name, id.seq, tag, payload, 0, false, duration{0});
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
    if (auto seen = cache.find(msg.id); seen != cache.end() || msg.id.origin == self()) {
      // A redundant edge of the tree: keep the sender for announcements only.
      ++counters.duplicates;
      if (seen != cache.end() && seen->second.grafted) {
        ++counters.duplicates_after_graft;
        seen->second.grafted = false;
        // The graft was early: the tree's copy trailed the announcement by
        // the time to the graft's answer and then its lag behind that.
        tree_delay.sample(static_cast<double>(seen->second.answered_after_ms) +
                          static_cast<double>((sched.now() - seen->second.received).count()));
      }
      // One duplicate proves little while messages from several origins
      // are in flight: a link just grafted carries copies of messages that
      // crossed elsewhere, and two messages meeting on one cycle at two
      // places would prune two of its links and cut the tree. A link is
      // redundant when it delivers nothing new for several messages in a
      // row, and for longer than its duplicates trail the first copies:
      // on slow paths (seconds across oceans) many messages are in flight
      // on each, and a count alone lets both ends of a cycle prune before
      // either prune has arrived.
      if (eager.contains(from)) {
        auto& run = duplicate_streak[from];
        const auto now = sched.now();
        if (seen != cache.end()) {
          const double lag = static_cast<double>((now - seen->second.received).count());
          run.lag_ms = run.lag_ms ? *run.lag_ms + (lag - *run.lag_ms) / 8 : lag;
        }
        if (run.count++ == 0) run.since = now;
        // Without a timed duplicate (only copies of this node's own messages
        // whose cache entries expired) the span cannot be judged: wait for
        // one, unless the span rule is off.
        const bool span_known = run.lag_ms || config.prune_span_lags == 0;
        if (run.count >= config.prune_after_duplicates && span_known &&
            static_cast<double>((now - run.since).count()) >= config.prune_span_lags * run.lag_ms.value_or(0)) {
          prune_link(from);  // ends the run, keeps its lag
          return;  // out of every tree: no PRUNE for one origin as well
        }
      }
      // From a lazy peer too: one that still pushes this origin's messages
      // (its side of the link is eager) is told to stop for this origin.
      if (config.origin_prune_after_duplicates > 0 && is_peer(from)) origin_duplicate(from, msg.id.origin);
      return;
    }
    if (config.origin_copies_end_runs || msg.id.origin != from)
      if (auto run = duplicate_streak.find(from); run != duplicate_streak.end()) run->second.count = 0;
    edit_tree(msg.id.origin, [&](origin_tree& t) { t.streak.erase(from); });
    const auto was_missing = missing.find(msg.id);
    const missing_message* announced = was_missing == missing.end() ? nullptr : &was_missing->second;
    const bool swapped =
        optimize(announced, msg.round, from) || judge_announcers(announced, msg.round, from);
    const auto how = remember(was_missing, msg.id, msg.tag, msg.payload, msg.round, from);
    if (joins_tree(from, how, swapped)) to_eager(from);
    push(msg.id, msg.tag, msg.payload, msg.round + 1, from, how.grafted && config.flood_after_graft);
    deliver(msg.id, msg.tag, msg.payload, msg.round, from);
  }

  // Per-origin trees (origin_prune_after_duplicates). A link that only
  // repeats one origin's messages is redundant in that origin's tree, though
  // other origins' messages may come over it first; with one shared tree
  // those first copies end every run, and with every node writing no link
  // is ever pruned. Pruned on both ends, like a link of the shared tree:
  // the peer sent these copies, so it has the messages without this node.
  const origin_tree* find_tree(const std::string& origin) const {
    auto it = origin_trees.find(origin);
    return it == origin_trees.end() ? nullptr : &it->second;
  }
  origin_tree& tree_of(const std::string& origin) {
    if (auto it = origin_trees.find(origin); it != origin_trees.end()) return it->second;
    // Dropping an origin's state (an arbitrary one) brings its links back
    // into its tree: more duplicates until they are pruned again, nothing
    // lost.
    if (origin_trees.size() >= config.max_origin_trees) origin_trees.erase(origin_trees.begin());
    auto& t = origin_trees[origin];
    counters.origin_trees = origin_trees.size();
    return t;
  }

  // Changes one origin's tree (if it has one) or every tree. A tree left
  // with nothing pruned and no run counted holds nothing: dropped, so that
  // the bound counts origins that matter.
  template <class F>
  void edit_tree(const std::string& origin, const F& change) {
    if (auto it = origin_trees.find(origin); it != origin_trees.end()) edit_at(it, change);
  }
  template <class F>
  void edit_trees(const F& change) {
    for (auto it = origin_trees.begin(); it != origin_trees.end();) edit_at(it++, change);
  }
  template <class F>
  void edit_at(decltype(origin_trees)::iterator it, const F& change) {
    change(it->second);
    if (!it->second.pruned.empty() || !it->second.streak.empty()) return;
    origin_trees.erase(it);
    counters.origin_trees = origin_trees.size();
  }

  void origin_duplicate(const std::string& from, const std::string& origin) {
    auto& tree = tree_of(origin);
    // A peer pruned here may push this origin's messages all the same: it
    // floods after a graft, or this node's GRAFT put it back on its side
    // (only the answering end of a GRAFT goes back into the tree). Its run
    // counts too, and a PRUNE again brings its side in line.
    auto& run = tree.streak[from];
    const auto now = sched.now();
    if (run.count++ == 0) run.since = now;
    if (run.count < config.origin_prune_after_duplicates) return;
    // The span rule of the shared tree, with the link's lag: on a path with
    // many messages in flight both ends of a cycle would prune it at once.
    if (config.origin_prune_span_lags > 0) {
      auto link = duplicate_streak.find(from);
      if (link == duplicate_streak.end() || !link->second.lag_ms ||
          static_cast<double>((now - run.since).count()) < config.origin_prune_span_lags * *link->second.lag_ms)
        return;
    }
    tree.streak.erase(from);
    tree.pruned.insert(from);
    ++counters.origin_prunes_sent;
    net.send(from, channel::broadcast, encode_origin_prune(origin));
  }

  void deliver(const message_id& id, const std::string& tag, const byte_slice& payload, std::uint64_t hops,
               const std::string& from) {
    auto it = subscribers.find(tag);
    if (it == subscribers.end()) return;  // relayed for others, not for us
    ++counters.delivered;
    try {
      it->second(delivery{tag, payload, id.origin, hops, from});
    } catch (...) {
      log("subscriber for tag '" + tag + "' threw: " + exception_text(std::current_exception()));
    }
  }

  void on(const std::string& from, const ihave_message& msg) {
    const auto now = sched.now();
    for (const auto& a : msg.ids) {
      if (a.id.origin == self()) continue;
      if (auto c = cache.find(a.id); c != cache.end()) {
        // Announced after its copy came: how much sooner (or later) this
        // announcer would have brought it.
        if (const auto* sender = slots.name(c->second.sender, c->second.received))
          sample_saving(from, *sender, static_cast<double>(c->second.round) - static_cast<double>(a.round));
        continue;
      }
      auto it = missing.find(a.id);
      if (it == missing.end()) {
        if (missing.size() >= config.max_missing) continue;
        const auto wait =
            now < repair_until || eager.empty() ? config.repair_graft_timeout : graft_wait();
        if (missing.empty()) wake_timers();
        it = missing.emplace(a.id, missing_message{{}, now + wait, false, now, {}}).first;
      }
      // One entry per announcer, however often it repeats the id: the list
      // is bounded by the active view.
      auto& announcers = it->second.announcers;
      if (std::none_of(announcers.begin(), announcers.end(), [&](const auto& x) { return x.first == from; }))
        announcers.emplace_back(from, a.round);
    }
    counters.missing = missing.size();
  }

  // The graft timeout, spread at random by graft_jitter (0 by default):
  // tried so that the nodes behind a cut would not all graft at once; no
  // measured effect once the other rules are in, so it is off.
  duration graft_wait() {
    const auto base = graft_wait_base();
    counters.graft_wait_ms = static_cast<std::uint64_t>(base.count());
    const auto spread = static_cast<duration::rep>(static_cast<double>(base.count()) * config.graft_jitter);
    if (spread <= 0) return base;
    return base + duration{std::uniform_int_distribution<duration::rep>(0, spread)(rng)};
  }

  // graft_timeout, or with adaptive_graft_timeout the delay by which tree
  // copies trail announcements here (see plumtree_config).
  duration graft_wait_base() const {
    if (!config.adaptive_graft_timeout) return config.graft_timeout;
    const auto ms = [](duration d) { return static_cast<double>(d.count()); };
    return duration{static_cast<duration::rep>(std::llround(tree_delay.timeout(
        ms(config.graft_timeout), ms(config.graft_timeout_min), ms(config.graft_timeout_max))))};
  }

  // The paper's optimisation: a message that arrives by the tree `round`
  // hops from its origin, announced earlier by a lazy peer that had it at
  // fewer hops, shows a shorter path. When the saving reaches the threshold
  // the announcer's link joins the tree and the sender's leaves it, so the
  // tree stays a tree (the announcer is not behind this node: it had the
  // message first) and gets shallower.
  // True when it took the sender out of the tree.
  // `announced` is the message's entry in the missing table, if any.
  bool optimize(const missing_message* announced, std::uint64_t round, const std::string& from) {
    if (config.optimization_threshold == 0 || !announced || !eager.contains(from)) return false;
    const std::pair<std::string, std::uint64_t>* best = nullptr;
    for (const auto& a : announced->announcers)
      if (a.first != from && lazy.contains(a.first) && (!best || a.second < best->second)) best = &a;
    if (!best || best->second + 1 + config.optimization_threshold > round) return false;
    return swap_link(best->first, from);
  }

  // The announcers of a message that has just come by the tree from
  // `sender` at `round`: each one's offer is a sample of its pair.
  bool judge_announcers(const missing_message* announced, std::uint64_t round, const std::string& sender) {
    if (config.optimization_mean_hops <= 0 || !announced) return false;
    for (const auto& [announcer, offered] : announced->announcers)
      if (sample_saving(announcer, sender, static_cast<double>(round) - static_cast<double>(offered))) return true;
    return false;
  }

  // One sample of how many hops sooner `announcer` (lazy) offered a message
  // that came by `sender` (eager); swaps the two links once the pair's
  // average reaches optimization_mean_hops. The message at hand must have
  // come the longer way as well: the announcer then did not have it through
  // this node, so it is on the sender's side of the tree, and the swap
  // keeps the tree connected.
  bool sample_saving(const std::string& announcer, const std::string& sender, double saved) {
    if (config.optimization_mean_hops <= 0 || announcer == sender || !lazy.contains(announcer) ||
        !eager.contains(sender))
      return false;
    const auto now = sched.now();
    const auto a = slots.slot(announcer, now), e = slots.slot(sender, now);
    if (a == 0 || e == 0) return false;
    // Rounds come from peers: one absurd round moves the mean a bounded step.
    saved = std::clamp(saved, -64.0, 64.0);
    auto& pair = savings[static_cast<std::uint16_t>(a << 8 | e)];
    if (pair.samples < std::numeric_limits<std::uint32_t>::max()) ++pair.samples;
    // A plain mean up to optimization_samples, then a moving one.
    pair.mean += (saved - pair.mean) / static_cast<double>(std::min(pair.samples, config.optimization_samples));
    const bool shorter = pair.samples >= config.optimization_samples && pair.mean >= config.optimization_mean_hops;
    return shorter && saved >= 1 && swap_link(announcer, sender);  // (the swap forgets `pair`)
  }

  // The optimisation's swap: `in` joins the tree on both ends, `out` leaves
  // it on both ends. At most one per optimization_interval.
  bool swap_link(const std::string& in, const std::string& out) {
    const auto now = sched.now();
    if (now < next_optimization) return false;
    next_optimization = now + config.optimization_interval;
    ++counters.optimizations;
    to_eager(in);
    net.send(in, channel::broadcast, encode_graft_link());
    prune_link(out);
    return true;
  }

  // This node takes `p` out of its tree, and tells `p` to do the same.
  // Copies `p` pushed before the PRUNE reaches it may still come first
  // for prune_grace (see joins_tree).
  void prune_link(const std::string& p) {
    to_lazy(p);
    duplicate_streak[p].in_flight_until = sched.now() + config.prune_grace;
    ++counters.prune_sent;
    net.send(p, channel::broadcast, encode_prune());
  }

  // A link that changed sides: its pairs' samples described the old tree.
  void forget_savings(const std::string& peer) {
    if (savings.empty()) return;
    const auto s = slots.find(peer);
    if (s == 0) return;
    std::erase_if(savings, [&](const auto& e) { return (e.first >> 8) == s || (e.first & 0xff) == s; });
  }

  void on(const std::string& from, const graft_message& msg) {
    ++counters.graft_received;
    if (is_peer(from)) to_eager(from);
    const auto unprune = [&](origin_tree& t) { t.pruned.erase(from); };
    if (!msg.id) return edit_trees(unprune);  // the link only, for every origin
    edit_tree(msg.id->origin, unprune);
    auto it = cache.find(*msg.id);
    if (it == cache.end()) return;  // expired: the grafter will ask someone else
    if (congested(from)) {
      // Announced again, so the grafter keeps this node among those it may
      // ask; it asks again after graft_retry_timeout, when the queue may
      // have room.
      ++counters.graft_answers_deferred;
      if (is_peer(from)) announce(from, *msg.id, std::uint64_t{it->second.round} + 1);
      return;
    }
    if (!spend_graft_budget(from, it->second.payload.size())) {
      ++counters.graft_answers_throttled;
      return;
    }
    ++counters.gossip_sent;
    net.send(from, channel::broadcast,
             encode_gossip(*msg.id, *it->second.tag, std::uint64_t{it->second.round} + 1, it->second.payload));
  }

  // Payload bytes per peer. Forgotten on peer_down; a peer outside the
  // active view (views are briefly asymmetric while they change) is
  // answered too, its bucket dropped first when they pile up.
  detail::per_peer_buckets graft_budgets{static_cast<double>(config.graft_answer_bytes_per_second),
                                         static_cast<double>(config.graft_answer_burst_bytes)};
  bool spend_graft_budget(const std::string& peer, std::size_t bytes) {
    return graft_budgets.take(peer, sched.now(), static_cast<double>(bytes),
                              [&](const std::string& p) { return is_peer(p); });
  }

  void on(const std::string& from, const prune_message& msg) {
    if (!msg.origin) {
      ++counters.prune_received;
      if (is_peer(from)) to_lazy(from);
      return;
    }
    // Honoured with the rule off here too (the peer runs it): bounded by
    // max_origin_trees all the same.
    ++counters.origin_prunes_received;
    if (!is_peer(from)) return;
    auto& tree = tree_of(*msg.origin);
    tree.pruned.insert(from);
    tree.streak.erase(from);
  }

  void on_membership(const membership_event& ev) {
    if (ev.what == membership_event::kind::peer_up) {
      // A new link joins the tree only where the tree does not reach: an
      // extra eager link closes a cycle, and pruning cycles while messages
      // from several origins are in flight can cut the tree in two places.
      // A node that is in the tree grafts the link if it ever needs it.
      if (!config.lazy_new_links) {
        to_eager(ev.peer.id);
      } else if (eager.empty()) {
        // Outside the tree (a joiner, or a leaf that lost its link): join
        // it through this link, on both ends.
        to_eager(ev.peer.id);
        net.send(ev.peer.id, channel::broadcast, encode_graft_link());
      } else {
        lazy.insert(ev.peer.id);
      }
    } else if (ev.what == membership_event::kind::peer_down) {
      if (eager.contains(ev.peer.id)) {
        ++counters.tree_links_lost;
        repair_until = sched.now() + config.repair_window;
      }
      eager.erase(ev.peer.id);
      lazy.erase(ev.peer.id);
      pending_ihave.erase(ev.peer.id);
      graft_budgets.forget(ev.peer.id);
      duplicate_streak.erase(ev.peer.id);
      forget_savings(ev.peer.id);  // before its slot goes
      slots.release(ev.peer.id);
      edit_trees([&](origin_tree& t) {
        t.pruned.erase(ev.peer.id);
        t.streak.erase(ev.peer.id);
      });
      for (auto& [id, m] : missing) {
        std::erase_if(m.announcers, [&](const auto& a) { return a.first == ev.peer.id; });
        std::erase(m.fetched_from, ev.peer.id);
      }
    }
  }

  // One loop does all of the timed work: flushing IHAVE batches, grafting
  // missing messages, expiring the cache.
  // Holds the state alive while suspended, so a plumtree destroyed without
  // stop() leaves the loop to wake, see it was cancelled, and end.
  // Flushes announcements, fetches what is overdue and expires the cache
  // every ihave_interval, on a fixed grid of instants from the start. With
  // nothing to announce or fetch it waits for work instead (an alarm stands
  // in for the cache's next expiry), then goes on on the same grid: an idle
  // node does not wake ten times a second, and what it does happens at the
  // instants it would have happened anyway.
  static task<> timers_loop(std::shared_ptr<impl> self) {
    const auto period = self->config.ihave_interval;
    const auto origin = self->sched.now();
    // The first instant of the grid at or after `t`.
    const auto tick_from = [&](duration t) { return origin + ((t - origin + period - duration{1}) / period) * period; };
    auto next_tick = origin + period;
    while (!self->stopped) {
      if (self->idle()) {
        std::optional<duration> expiry;
        if (!self->cache_order.empty() && self->config.cache_ttl < duration::max() / 2)  // else never
          expiry = tick_from(self->cache_order.front().first + self->config.cache_ttl + duration{1});
        if (!expiry || *expiry > next_tick) {
          if (expiry && !self->expiry_alarm) {
            self->expiry_alarm = true;
            self->loops.spawn("plumtree_expiry", alarm(self, *expiry));
          }
          self->timers_idle = true;
          const bool woken = co_await self->work_ready.wait();
          self->timers_idle = false;
          if (!woken || self->stopped) break;
          // Work that arrives on a tick waits for the next one, as it did
          // when a tick came first; the expiry's tick runs now (in real time
          // the alarm wakes a little late, and the grid shifts with it).
          const auto now = self->sched.now();
          next_tick = self->oldest_expired() ? now : tick_from(now + duration{1});
        }
      }
      if (next_tick < self->sched.now()) next_tick = tick_from(self->sched.now());  // fell behind (real time)
      if (next_tick > self->sched.now()) {
        const bool elapsed = co_await self->sched.sleep(next_tick - self->sched.now());
        if (!elapsed) break;
      }
      next_tick += period;
      self->flush_ihave();
      self->graft_missing();
      self->expire_cache();
    }
  }

  // Wakes the timers loop at `at`, the tick at which the oldest cache entry
  // expires. One at a time: entries expire in the order they came, so no
  // later entry needs an earlier alarm.
  static task<> alarm(std::shared_ptr<impl> self, duration at) {
    const bool elapsed = co_await self->sched.sleep(at - self->sched.now());
    self->expiry_alarm = false;
    if (elapsed) self->wake_timers();
  }

  void wake_timers() {
    if (!timers_idle) return;
    timers_idle = false;
    work_ready.notify();
  }

  // The oldest cached entry is past its time to live (expire_cache drops it).
  bool oldest_expired() const {
    return !cache_order.empty() && sched.now() - cache_order.front().first > config.cache_ttl;
  }

  // Nothing to announce or fetch: the loop need not tick.
  bool idle() const { return pending_ihave.empty() && missing.empty(); }

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

  // Fetches what is overdue. At most one link joins the tree per pass: the
  // lazy peer that announced most of the overdue messages is grafted; what
  // only other lazy peers announced is fetched from them without keeping
  // their links in the tree (GRAFT then PRUNE). Grafting every announcer
  // at once would close cycles, and pruning cycles while messages from
  // several origins are in flight cuts the tree in two places, which sets
  // off more grafts: the tree stays shattered.
  void graft_missing() {
    const auto now = sched.now();
    std::vector<std::pair<const message_id*, missing_message*>> due;
    std::map<std::string, std::size_t> lazy_announcers;  // peer -> overdue messages it announced
    for (auto it = missing.begin(); it != missing.end();) {
      auto& m = it->second;
      if (m.deadline > now) {
        ++it;
        continue;
      }
      // Announcers that left the view were dropped on peer_down; an IHAVE
      // from a node outside the view leaves one that is not a peer.
      std::erase_if(m.announcers, [&](const auto& a) { return !is_peer(a.first); });
      if (m.announcers.empty()) {
        it = missing.erase(it);  // nobody left to ask
        continue;
      }
      due.emplace_back(&it->first, &m);
      for (const auto& a : m.announcers)
        if (lazy.contains(a.first)) ++lazy_announcers[a.first];
      ++it;
    }
    std::string joining;  // the one lazy peer grafted into the tree this pass
    std::size_t best = 0;
    for (const auto& [peer, n] : lazy_announcers)
      if (n > best) best = n, joining = peer;
    for (auto [id, m] : due) {
      // Prefer a tree link, then the joining peer, then the first
      // announcer; skip announcers whose send queue is congested. One GRAFT
      // (and PRUNE) goes per id, so after a long stall thousands are due
      // at once: they would overflow the queue to a congested announcer.
      // When every announcer is congested the id waits for a later tick.
      const auto free = [&](const auto& a) { return !congested(a.first); };
      auto pick = std::find_if(m->announcers.begin(), m->announcers.end(),
                               [&](const auto& a) { return eager.contains(a.first) && free(a); });
      if (pick == m->announcers.end())
        pick = std::find_if(m->announcers.begin(), m->announcers.end(),
                            [&](const auto& a) { return a.first == joining && free(a); });
      if (pick == m->announcers.end()) pick = std::find_if(m->announcers.begin(), m->announcers.end(), free);
      if (pick == m->announcers.end()) {
        ++counters.grafts_deferred;
        continue;
      }
      const auto [peer, round] = *pick;
      m->announcers.erase(pick);
      ++counters.graft_sent;
      net.send(peer, channel::broadcast, encode_graft(*id, round));
      if (eager.contains(peer) || peer == joining) {
        to_eager(peer);
      } else {
        ++counters.prune_sent;  // fetch only: the far side keeps the link out of its tree
        net.send(peer, channel::broadcast, encode_prune());
        if (std::find(m->fetched_from.begin(), m->fetched_from.end(), peer) == m->fetched_from.end())
          m->fetched_from.push_back(peer);  // at most once each: bounded by the active view
      }
      m->deadline = now + config.graft_retry_timeout;
      m->grafted = true;
    }
    counters.missing = missing.size();
  }

  void expire_cache() {
    while (oldest_expired()) forget_oldest();
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
  // The idle timers loop waits in work_ready, which the state owns while the
  // loop owns the state: closing hands the waiter to the executor, so the
  // cycle ends even if the executor never runs again.
  impl_->work_ready.close();
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
  m->membership.set_eviction_preference([weak](const std::string& peer) {
    auto p = weak.lock();
    return p && !p->stopped && p->eager.contains(peer);
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

bool plumtree::room_for_writes(std::size_t admitted) const { return impl_->room_for_writes(admitted); }
duration plumtree::write_room_recheck() const { return impl_->write_room_recheck(); }
std::vector<std::string> plumtree::eager_peers() const { return {impl_->eager.begin(), impl_->eager.end()}; }
std::vector<std::string> plumtree::lazy_peers() const { return {impl_->lazy.begin(), impl_->lazy.end()}; }
const plumtree_counters& plumtree::counters() const { return impl_->counters; }

}  // namespace barrel_p2p
