#include "barrel_p2p/replica.hpp"
#include "barrel_p2p/log.hpp"

#include "barrel_p2p/cbor.hpp"
#include "barrel_p2p/crdt_wire.hpp"
#include "barrel_p2p/event_stream.hpp"
#include "barrel_p2p/replica_messages.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "barrel_p2p/detail/wake_signal.hpp"
#include "log_limiter.hpp"
#include "token_bucket.hpp"

#include <limits>
#include <map>
#include <set>
#include <stdexcept>

namespace barrel_p2p {

task<> replica_callbacks::merge_custom(const std::string&, const json&) { co_return; }
task<> replica_callbacks::apply_full_sync_cbor(const std::string& name, std::span<const std::uint8_t> snapshot) {
  // The driver checked the bytes with cbor_reader::item within its limits.
  cbor_error error;
  auto decoded = decode_cbor(snapshot, cbor_limits{64, std::numeric_limits<std::size_t>::max()}, &error);
  if (!decoded) throw std::invalid_argument("snapshot does not decode: " + error.reason);
  co_await apply_full_sync(name, *decoded);
}
const sync_index* replica_callbacks::sync_items(const std::string&) { return nullptr; }
task<std::optional<json>> replica_callbacks::snapshot_of(const std::string&, const std::vector<sync_item>&) {
  co_return std::nullopt;
}
task<std::optional<std::vector<std::uint8_t>>> replica_callbacks::snapshot_cbor_of(const std::string& name,
                                                                                   const std::vector<sync_item>& items) {
  auto snapshot = co_await snapshot_of(name, items);
  if (!snapshot) co_return std::nullopt;
  co_return encode_cbor(*snapshot);
}

namespace {

// Work for an instance's loop, processed in arrival order.
struct work_item {
  enum class kind { delta, custom, snapshot, push_to, node_down, reconcile } what;
  json body;         // delta, custom payload or snapshot (as json)
  std::string peer;  // push_to, node_down; for the others the neighbour it came from
  std::size_t bytes = 0;  // the body's wire size, for inbox_limit_bytes
  std::optional<range_sync_message> ranges{};  // reconcile
  byte_slice cbor{};  // a snapshot as its CBOR bytes, instead of body

  // Data from a peer (bounded, charged to it) rather than a peer event.
  [[nodiscard]] bool carries_data() const noexcept { return what != kind::push_to && what != kind::node_down; }
};

// A reassembled snapshot: its bytes, or (another encoder's) its json.
using work_item_body = std::variant<byte_slice, json>;

}  // namespace

struct replica_host::impl {
  transport& net;
  hyparview& membership;
  plumtree& broadcast;
  scheduler& sched;
  hlc_clock& clock;
  replica_config config;
  logger log{config.log, net.self().id, "replica"};
  std::function<void()> write_guard;  // the clock-skew guard, set by the node
  random_engine rng;
  std::map<std::string, std::weak_ptr<replica::impl>> instances;
  // Chunked snapshots being received, per (peer, instance): bounded by
  // max_snapshot_bytes each, dropped when the peer goes down.
  struct assembly {
    std::uint64_t id = 0;
    std::uint64_t parts = 0;
    std::uint64_t next = 0;
    std::vector<std::uint8_t> bytes;
  };
  std::map<std::pair<std::string, std::string>, assembly> assemblies;
  // Openings of exchanges for instances not started here yet, per (peer,
  // instance): answered when the instance starts, instead of opening a
  // second exchange with that peer. Bounded; dropped when the peer goes.
  static constexpr std::size_t max_early_openings = 256;
  static constexpr std::size_t max_early_openings_per_peer = 8;
  std::map<std::pair<std::string, std::string>, range_sync_message> early_openings;
  task_group loops;  // the host's own: the sweep of partial snapshots
  bool started = false;
  bool stopped = false;

  impl(transport& n, hyparview& m, plumtree& b, scheduler& s, hlc_clock& c, replica_config cfg)
      : net(n), membership(m), broadcast(b), sched(s), clock(c), config(std::move(cfg)),
        rng(config.seed ? config.seed : std::random_device{}()), loops(s.get_executor()),
        room_waiters_came(s.get_executor()) {
    if (config.anti_entropy_interval <= duration{0} || config.anti_entropy_jitter < 0 ||
        config.anti_entropy_jitter >= 1 || config.inbox_limit == 0 || config.inbox_limit_bytes == 0 ||
        config.inbox_peer_limit_bytes == 0 || config.reconcile_batch_items == 0 ||
        config.range_sync.branching < 2 || config.range_sync.list_threshold == 0 ||
        config.range_sync.max_ranges <= config.range_sync.branching || config.range_sync.max_need == 0 ||
        config.backpressure_max_wait < duration{0} || config.sync_chunk_bytes < 1024 ||
        config.reconcile_push_window <= duration{0} ||
        !(config.reconcile_push_max_fill > 0 && config.reconcile_push_max_fill <= 1) ||
        config.max_snapshot_bytes < config.sync_chunk_bytes || config.max_snapshot_items == 0)
      throw std::invalid_argument(
          "replica_config: anti_entropy_interval must be positive, jitter in [0, 1), inbox_limit, inbox_limit_bytes, inbox_peer_limit_bytes and reconcile_batch_items > 0, "
          "range_sync.branching >= 2, list_threshold and max_need > 0, max_ranges > branching, "
          "backpressure_max_wait >= 0, sync_chunk_bytes >= 1024, reconcile_push_window > 0, "
          "reconcile_push_max_fill in (0, 1], "
          "max_snapshot_bytes >= sync_chunk_bytes, "
          "max_snapshot_items > 0");
  }


  // Waits until the broadcast layer has room for a local write at every
  // eager peer, counting the writes already let through that have not
  // been broadcast yet (they suspend in the owner's merge first): without
  // them, a crowd of waiters would all pass on the same drain. Looks again
  // when a send queue shrinks (transport::on_send_progress) and when the
  // recheck loop says time alone may have made room (a stalled eager peer
  // reaching slow_peer_after) or a waiter's deadline has come. Gives up
  // after backpressure_max_wait. True when it had to wait. The caller
  // holds a room_ticket until its broadcast is queued.
  std::size_t admitted = 0;
  struct room_waiter {
    std::shared_ptr<wake_signal> wake;
    duration deadline;
  };
  std::vector<room_waiter> room_waiters;
  wake_signal room_waiters_came;  // the recheck loop idles on it
  task<bool> wait_for_room() {
    if (stopped || config.backpressure_max_wait == duration{0} || broadcast.room_for_writes(admitted))
      co_return false;
    const auto deadline = sched.now() + config.backpressure_max_wait;
    auto wake = std::make_shared<wake_signal>(sched.get_executor());
    room_waiters.push_back({wake, deadline});
    room_waiters_came.notify();
    // `stopped` first: after node::stop the transport may be gone.
    while (!stopped && !broadcast.room_for_writes(admitted) && sched.now() < deadline)
      if (!co_await wake->wait()) break;  // closed: the host stops
    std::erase_if(room_waiters, [&](const room_waiter& w) { return w.wake == wake; });
    co_return true;
  }

  // A send queue shrank (or went): every waiting writer looks again, and
  // a reconciliation push to that peer may have left the queue.
  void on_send_progress(const std::string& peer, std::size_t bytes_written) {
    for (auto& w : room_waiters) w.wake->notify();
    if (auto it = pushes_in_flight.find(peer); it != pushes_in_flight.end()) {
      const auto queue = net.send_queue(peer);
      it->second -= std::min(it->second, bytes_written);
      if (it->second == 0 || !queue || queue->frames == 0) pushes_in_flight.erase(it);
    }
  }

  // Reconciliation pushes still in the send queue to a peer: the queue's
  // bytes up to the end of the last push (they leave in order). While one
  // is, an answer to that peer pushes nothing: the entries it lacks may be
  // the ones on their way, and a peer slower than the rounds would
  // otherwise get them again each round, faster than it applies them.
  // (The batch being written when the push was queued is not counted: the
  // push may count as gone up to one batch early.)
  std::map<std::string, std::size_t> pushes_in_flight;
  void note_push(const std::string& peer) {
    if (const auto queue = net.send_queue(peer); queue && queue->bytes > 0) pushes_in_flight[peer] = queue->bytes;
  }

  // While writers wait: wakes them all when time alone may have made room
  // (plumtree::write_room_recheck) or the first deadline comes; idle
  // otherwise. One loop for all waiters rather than a timer each.
  static task<> room_recheck_loop(std::shared_ptr<impl> self) {
    while (!self->stopped) {
      if (self->room_waiters.empty()) {
        if (!co_await self->room_waiters_came.wait()) break;
        continue;
      }
      const auto now = self->sched.now();
      auto next = self->broadcast.write_room_recheck();
      for (const auto& w : self->room_waiters) next = std::min(next, std::max(w.deadline - now, duration{1}));
      const bool elapsed = co_await self->sched.sleep(next);
      if (!elapsed) break;
      for (auto& w : self->room_waiters) w.wake->notify();
    }
  }

  // Every waiting writer ends its wait now (the host stops or goes).
  void release_room_waiters() {
    room_waiters_came.close();
    for (auto& w : room_waiters) w.wake->close();
  }


  std::shared_ptr<replica::impl> find(const std::string& name) {
    auto it = instances.find(name);
    return it == instances.end() ? nullptr : it->second.lock();
  }

  bool on_message(const std::string& from, const byte_slice& body);
  void on_membership(const membership_event& ev);

  // A partial snapshot lives only as long as the connection it comes over:
  // a sender outside the active view gets no peer_down, and would
  // otherwise leave up to max_snapshot_bytes behind per instance.
  // Every second (the sweep), and before a new assembly starts: what peers
  // that are gone left behind, including those outside the active view,
  // which never get a peer_down.
  void drop_disconnected_assemblies() {
    std::erase_if(assemblies, [&](const auto& entry) { return !net.is_connected(entry.first.first); });
    std::erase_if(early_openings, [&](const auto& entry) { return !net.is_connected(entry.first.first); });
  }

  // Keeps an opening for an instance not started here: only the shape
  // range_sync_start makes (one fingerprint, or a list of at most
  // list_threshold items), at most 8 per peer and 256 in all.
  void keep_early_opening(const std::string& from, const std::string& name, range_sync_message& m) {
    const auto& r = m.ranges.front();
    if (r.what == sync_range::mode::list && r.items.size() > config.range_sync.list_threshold) return;
    const auto key = std::make_pair(from, name);
    if (!early_openings.contains(key)) {
      if (early_openings.size() >= max_early_openings) return;
      const auto first = early_openings.lower_bound({from, std::string()});
      std::size_t mine = 0;
      for (auto it = first; it != early_openings.end() && it->first.first == from; ++it) ++mine;
      if (mine >= max_early_openings_per_peer) return;
    }
    early_openings[key] = std::move(m);
  }
  duration sweep_period{1000};
  // One part of a chunked snapshot; returns the whole snapshot once the
  // last part is in, nullopt otherwise (or when the part is refused).
  std::optional<work_item_body> on_part(const std::string& from, replica_part& part, replica_counters& counters);
  void forget_assemblies(const std::string& name);
};

struct replica::impl : std::enable_shared_from_this<replica::impl> {
  std::shared_ptr<replica_host::impl> host;
  std::string name;
  logger log{host->log.sub(name)};  // "<id> replica <name>: ..."
  replica_callbacks& callbacks;
  replica_counters counters;
  event_publisher<work_item> inbox_in;
  event_stream<work_item> inbox;
  task_group loops;
  bool stopped = false;

  impl(std::shared_ptr<replica_host::impl> h, std::string n, replica_callbacks& cb)
      : host(std::move(h)),
        name(std::move(n)),
        callbacks(cb),
        inbox_in(host->sched.get_executor()),
        // enqueue bounds data items first; peer events may go past the limit
        inbox(inbox_in.subscribe(std::numeric_limits<std::size_t>::max())),
        loops(host->sched.get_executor()) {}

  // Peers with a snapshot push already queued: repeated pulls (anti-entropy,
  // peer_up, request_sync) from one peer cost one snapshot, not one each.
  std::set<std::string> pushes_queued;
  // Peers we opened an exchange with and have not heard from since, and
  // when: two nodes that open at once (a late start on one side, peer_up
  // on the other) keep the exchange of the smaller id, not both. An
  // opening older than crossing_window did not cross the peer's: between
  // equal states nobody answers, so an entry may stay without a reply.
  std::map<std::string, duration> opened_to;
  static constexpr duration crossing_window{2'000};

  // The push budget (replica_config::reconcile_push_window): entries that
  // reconciliation may still push, per peer and in all. Token buckets whose
  // size follows the state's (set before each use).
  static constexpr std::size_t max_push_buckets = 1024;
  static constexpr double all_peers_states = 8;
  std::map<std::string, detail::token_bucket> push_budget;
  std::optional<detail::token_bucket> all_push_budget;
  detail::log_limiter deferred_log;
  std::uint64_t deferred_since_log = 0;

  // How many of `wanted` entries may go to `peer` now; takes them.
  std::size_t take_push_budget(const std::string& peer, std::size_t state_size, std::size_t wanted) {
    if (wanted == 0) return 0;
    const auto now = host->sched.now();
    const double window_s = std::chrono::duration<double>(host->config.reconcile_push_window).count();
    const double whole = static_cast<double>(std::max(state_size, host->config.reconcile_batch_items));
    const auto sized = [&](detail::token_bucket& b, double states) -> detail::token_bucket& {
      b.set_limits(now, whole * states / window_s, whole * states);
      return b;
    };
    if (push_budget.size() >= max_push_buckets && !push_budget.contains(peer)) {
      // Buckets that have refilled are as good as new ones: drop those
      // first, else all (the budget of all peers still bounds the total).
      for (auto it = push_budget.begin(); it != push_budget.end();)
        it = sized(it->second, 1).available(now) >= whole ? push_budget.erase(it) : std::next(it);
      if (push_budget.size() >= max_push_buckets) push_budget.clear();
    }
    auto& mine = sized(push_budget.try_emplace(peer, whole / window_s, whole, now).first->second, 1);
    if (!all_push_budget) all_push_budget.emplace(whole * all_peers_states / window_s, whole * all_peers_states, now);
    auto& all = sized(*all_push_budget, all_peers_states);
    const double room = std::min(mine.available(now), all.available(now));
    const auto allowed = std::min(wanted, static_cast<std::size_t>(std::max(0.0, room)));
    (void)mine.take(now, static_cast<double>(allowed));
    (void)all.take(now, static_cast<double>(allowed));
    if (allowed < wanted) {
      counters.reconcile_push_deferred += wanted - allowed;
      deferred_since_log += wanted - allowed;
      if (deferred_log.allow(now, std::chrono::seconds(10))) {
        log("reconciliation push budget spent: " + std::to_string(deferred_since_log) +
                            " entries peers lacked wait for later rounds (last: " + peer + ")");
        deferred_since_log = 0;
      }
    }
    return allowed;
  }

  // Entries taken from the budgets and then not pushed (the queue filled
  // up between batches) go back: a slow peer must not spend the budget of
  // all peers on entries it never got.
  void return_push_budget(const std::string& peer, std::size_t unused) {
    if (unused == 0) return;
    if (auto it = push_budget.find(peer); it != push_budget.end()) it->second.give_back(static_cast<double>(unused));
    if (all_push_budget) all_push_budget->give_back(static_cast<double>(unused));
  }

  // Items and wire bytes queued: the newest item is the one dropped, so
  // what is queued stays exactly known.
  std::size_t queued_items = 0;
  detail::log_limiter drop_log;
  void enqueue(work_item w) {
    if (stopped) return;
    const auto& cfg = host->config;
    // One item is always let in, however large (a full sync of a big map).
    // Peer events (a peer to push to, a node down) carry no data and are
    // bounded by membership changes: never dropped, or a flood of tiny
    // deltas could make a node skip a prune.
    const bool control = !w.carries_data();
    const bool over_bytes = counters.inbox_bytes > 0 && counters.inbox_bytes + w.bytes > cfg.inbox_limit_bytes;
    if (!control && (queued_items >= cfg.inbox_limit || over_bytes)) {
      ++counters.inbox_drops;
      if (drop_log.allow(host->sched.now(), std::chrono::seconds(10)))
        log("inbox full (" + std::to_string(queued_items) + " items, " +
                  std::to_string(counters.inbox_bytes) + " bytes); dropped " +
                  std::to_string(drop_log.take_held_back() + 1) + " work items since the last report");
      return;
    }
    if (w.what == work_item::kind::push_to && !pushes_queued.insert(w.peer).second) return;
    ++queued_items;
    counters.inbox_bytes += w.bytes;
    if (!control) charge(w.peer, w.bytes);
    inbox_in.publish(std::move(w));
  }

  // The receive budget (inbox_peer_limit_bytes): bytes queued per neighbour,
  // and the hold on reading it while they are over budget. Entries exist
  // only for neighbours with work queued.
  struct peer_load {
    std::size_t bytes = 0;
    std::size_t items = 0;
    read_hold hold;
  };
  // Items count too: a flood of tiny deltas fills inbox_limit long before
  // it weighs inbox_peer_limit_bytes. A quarter of the inbox per peer.
  std::size_t peer_item_limit() const { return std::max<std::size_t>(host->config.inbox_limit / 4, 1); }
  std::map<std::string, peer_load> loads;
  void charge(const std::string& peer, std::size_t bytes) {
    if (peer.empty()) return;
    auto& load = loads[peer];
    load.bytes += bytes;
    ++load.items;
    if (!load.hold && (load.bytes > host->config.inbox_peer_limit_bytes || load.items > peer_item_limit())) {
      ++counters.inbox_peer_holds;
      load.hold = host->net.hold_reading(peer);
    }
  }
  void discharge(const std::string& peer, std::size_t bytes) {
    auto it = loads.find(peer);
    if (it == loads.end()) return;
    auto& load = it->second;
    load.bytes -= std::min(load.bytes, bytes);
    if (load.items > 0) --load.items;
    if (load.hold && load.bytes <= host->config.inbox_peer_limit_bytes / 2 && load.items <= peer_item_limit() / 2)
      load.hold.reset();
    if (load.items == 0 && !load.hold) loads.erase(it);
  }

  // Plumtree delivery for our tag: the payload is decoded here, once.
  void on_broadcast(const byte_slice& bytes, const std::string& from) {
    auto payload = parse_replica_payload(bytes.bytes());
    if (!payload) {
      ++counters.bad_messages;
      log("ignored a broadcast of unknown shape");
      return;
    }
    if (auto* d = std::get_if<replica_delta>(&*payload)) {
      ++counters.deltas_received;
      enqueue({work_item::kind::delta, std::move(d->delta), from, bytes.size()});
    } else {
      ++counters.customs_received;
      enqueue({work_item::kind::custom, std::move(std::get<replica_custom>(*payload).payload), from, bytes.size()});
    }
  }

  // Runs one callback; a throwing owner is counted and logged, never fatal.
  template <class F>
  task<> guarded(const char* what, F call) {
    try {
      co_await call();
    } catch (...) {
      ++counters.callback_errors;
      log(std::string("callback ") + what + " threw: " + exception_text(std::current_exception()));
    }
  }

  task<> push_snapshot(std::string peer) {
    std::optional<json> snapshot;
    co_await guarded("full_sync_snapshot", [&]() -> task<> { snapshot = co_await callbacks.full_sync_snapshot(name); });
    if (!snapshot || stopped) co_return;
    send_snapshot(peer, encode_cbor(*snapshot));
  }

  // ---- range reconciliation (owners with sync_items) ---------------------
  const sync_index* reconciling() { return stopped ? nullptr : callbacks.sync_items(name); }

  void send_ranges(const std::string& peer, range_sync_message m) {
    ++counters.reconcile_sent;
    host->net.send(peer, channel::replica, encode(replica_reconcile{name, std::move(m)}));
  }

  // Opens an exchange: our whole state as one fingerprint (or a short list).
  void start_reconcile(const std::string& peer) {
    const auto* index = reconciling();
    if (!index) return;
    ++counters.reconcile_rounds;
    const auto now = host->sched.now();
    std::erase_if(opened_to, [&](const auto& e) { return now - e.second >= crossing_window; });
    opened_to[peer] = now;
    send_ranges(peer, range_sync_start(*index, host->config.range_sync));
  }

  // A message of an exchange arrived from `peer`: false when it is an
  // opening that crosses ours and loses the tie-break (the smaller id's
  // exchange goes on; the peer drops its own when ours arrives).
  bool take_reconcile(const std::string& peer, const range_sync_message& m) {
    const auto it = opened_to.find(peer);
    if (it == opened_to.end()) return true;
    const bool ours_alive = host->sched.now() - it->second < crossing_window;
    if (m.opening && ours_alive && host->membership.self().id < peer) {
      ++counters.reconcile_crossed;
      return false;
    }
    opened_to.erase(it);  // answered, or crossed by the exchange that wins
    return true;
  }

  // One message of an exchange: the entries the peer lacks go first (in
  // snapshots of a bounded size), then our answer.
  task<> answer_ranges(std::string peer, range_sync_message message) {
    const auto* index = reconciling();
    if (!index) co_return;
    const auto& cfg = host->config;
    auto step = range_sync_answer(*index, message, cfg.range_sync);
    // A queue already over the fill, or still holding our last push to
    // the peer, takes nothing from the budget either.
    if (!step.send.empty() && (push_congested(peer) || host->pushes_in_flight.contains(peer))) {
      counters.reconcile_push_congested += step.send.size();
      step.send.clear();
    }
    step.send.resize(take_push_budget(peer, index->size(), step.send.size()));
    // Batches of at most reconcile_batch_items entries, each built again
    // with fewer while it would encode over max_snapshot_bytes (large
    // values) or take the queue past the fill: every entry goes, waits
    // for a later round, or is logged as too large alone.
    std::size_t batch_items = cfg.reconcile_batch_items;
    bool pushed = false;
    for (std::size_t from = 0; from < step.send.size() && !stopped;) {
      if (from > 0 && push_congested(peer)) {  // the batches so far filled it: the rest next round
        counters.reconcile_push_congested += step.send.size() - from;
        return_push_budget(peer, step.send.size() - from);
        break;
      }
      const auto to = std::min(step.send.size(), from + batch_items);
      const std::vector<sync_item> batch(step.send.begin() + static_cast<std::ptrdiff_t>(from),
                                         step.send.begin() + static_cast<std::ptrdiff_t>(to));
      std::optional<std::vector<std::uint8_t>> snapshot;
      co_await guarded("snapshot_cbor_of",
                       [&]() -> task<> { snapshot = co_await callbacks.snapshot_cbor_of(name, batch); });
      if (stopped) break;
      if (snapshot) {
        // How much of the batch fits: under max_snapshot_bytes, and its
        // parts in the queue below the fill (a part dropped there would
        // abandon the whole snapshot). A batch that does not fit is built
        // again with that share of its entries (at most half); one entry
        // that does not fit the queue waits for a later round, unless the
        // queue is empty; one too large alone is counted and logged.
        const auto batch_size = to - from;
        const double fit = std::min(push_fit(peer, snapshot->size()), static_cast<double>(cfg.max_snapshot_bytes) /
                                                                          static_cast<double>(snapshot->size()));
        if (fit < 1 && batch_size > 1) {
          batch_items = std::clamp<std::size_t>(static_cast<std::size_t>(static_cast<double>(batch_size) * fit), 1,
                                                batch_size / 2);
          continue;  // the same entries again, fewer at a time
        }
        if (fit < 1 && snapshot->size() <= cfg.max_snapshot_bytes && !queue_empty(peer)) {
          counters.reconcile_push_congested += step.send.size() - from;
          return_push_budget(peer, step.send.size() - from);
          break;
        }
        // What is still current of the batch: the snapshot map's length.
        const auto entries = cbor_reader(*snapshot).map().value_or(batch.size());
        if (send_snapshot(peer, std::move(*snapshot))) {
          counters.reconcile_items_sent += entries;
          pushed = true;
        }
      }
      from = to;
    }
    if (pushed && !stopped) host->note_push(peer);
    if (step.reply && !stopped) send_ranges(peer, std::move(*step.reply));
  }

  // The send queue to `peer` is over reconcile_push_max_fill: entries it
  // lacks wait for a later round instead of queueing behind the last
  // round's copies (or being dropped with a part of them).
  bool push_congested(const std::string& peer) const {
    const auto queue = host->net.send_queue(peer);
    return queue && queue->fill() > host->config.reconcile_push_max_fill;
  }

  // How much of a snapshot of `size` bytes the queue to `peer` takes
  // before it is over reconcile_push_max_fill: its parts (frames of
  // sync_chunk_bytes) against the frame limit, its bytes against the byte
  // limit. 1 or more: all of it; infinity: the transport reports no queue.
  double push_fit(const std::string& peer, std::size_t size) const {
    const auto queue = host->net.send_queue(peer);
    if (!queue) return std::numeric_limits<double>::infinity();
    const double max_fill = host->config.reconcile_push_max_fill;
    const auto share = [&](std::size_t used, std::size_t limit, std::size_t needed) {
      if (limit == 0) return std::numeric_limits<double>::infinity();
      const double room = max_fill * static_cast<double>(limit) - static_cast<double>(used);
      return std::max(0.0, room) / static_cast<double>(needed);
    };
    const auto chunk = host->config.sync_chunk_bytes;
    const auto parts = std::max<std::size_t>(1, (size + chunk - 1) / chunk);
    return std::min(share(queue->frames, queue->frame_limit, parts),
                    share(queue->bytes, queue->byte_limit, std::max<std::size_t>(1, size)));
  }

  bool queue_empty(const std::string& peer) const {
    const auto queue = host->net.send_queue(peer);
    return !queue || queue->frames == 0;
  }

  // False when the snapshot is over max_snapshot_bytes: not sent, counted
  // and logged here.
  bool send_snapshot(const std::string& peer, std::vector<std::uint8_t> snapshot_cbor) {
    // Full sync goes straight to the peer, not through the broadcast tree.
    // The snapshot's bytes are encoded once and travel as the tail of one
    // message, or of several parts when they are too big for one.
    const auto& cfg = host->config;
    if (snapshot_cbor.size() > cfg.max_snapshot_bytes) {
      ++counters.snapshots_too_large;
      log("snapshot of " + std::to_string(snapshot_cbor.size()) +
                " bytes is over max_snapshot_bytes; not sent to " + peer);
      return false;
    }
    const auto bytes = share_bytes(snapshot_cbor);
    if (auto whole = encode_sync(name, byte_slice(bytes)); whole.size() <= cfg.sync_chunk_bytes) {
      ++counters.syncs_sent;
      host->net.send(peer, channel::replica, whole);
      return true;
    }
    // Parts go out in order on one connection; the receiver reassembles
    // them in order. A part the send queue drops ends this sync (the next
    // pull or peer_up starts another).
    ++counters.syncs_sent;
    const auto id = std::uniform_int_distribution<std::uint64_t>(1)(host->rng);
    const auto parts = (bytes.size() + cfg.sync_chunk_bytes - 1) / cfg.sync_chunk_bytes;
    const std::span<const std::uint8_t> all(bytes.bytes());
    for (std::uint64_t i = 0; i < parts; ++i) {
      const auto begin = i * cfg.sync_chunk_bytes;
      const auto length = std::min<std::size_t>(all.size() - begin, cfg.sync_chunk_bytes);
      // No backpressure wait here: this runs in the instance's inbox loop,
      // and at most max_snapshot_bytes / sync_chunk_bytes parts (64) cannot
      // fill a send queue; waiting would stall incoming deltas instead.
      if (stopped) return true;
      ++counters.sync_parts_sent;
      if (!host->net.send(peer, channel::replica,
                          encode_part(name, id, i, parts, byte_slice(bytes, all.subspan(begin, length))))) {
        log("part " + std::to_string(i) + " of a snapshot for " + peer +
                  " was not queued; the sync is abandoned");
        return true;
      }
    }
    return true;
  }

  // Static, holding the state: see plumtree's timers_loop.
  static task<> inbox_loop(std::shared_ptr<impl> self) { co_await self->process_inbox(); }
  static task<> anti_entropy_loop(std::shared_ptr<impl> self) { co_await self->run_anti_entropy(); }

  task<> process_inbox() {
    while (auto w = co_await inbox.next()) {
      --queued_items;
      counters.inbox_bytes -= w->bytes;
      if (w->carries_data()) discharge(w->peer, w->bytes);
      if (stopped) continue;  // drain: what is queued is dropped and uncounted
      switch (w->what) {
        case work_item::kind::delta:
          co_await guarded("merge_delta", [&]() { return callbacks.merge_delta(name, w->body); });
          break;
        case work_item::kind::custom:
          co_await guarded("merge_custom", [&]() { return callbacks.merge_custom(name, w->body); });
          break;
        case work_item::kind::snapshot:
          ++counters.syncs_received;
          if (w->cbor.empty())
            co_await guarded("apply_full_sync", [&]() { return callbacks.apply_full_sync(name, w->body); });
          else
            co_await guarded("apply_full_sync_cbor",
                             [&]() { return callbacks.apply_full_sync_cbor(name, w->cbor.bytes()); });
          break;
        case work_item::kind::push_to:
          pushes_queued.erase(w->peer);
          co_await push_snapshot(w->peer);
          break;
        case work_item::kind::node_down:
          co_await guarded("remove_node", [&]() { return callbacks.remove_node(name, w->peer); });
          break;
        case work_item::kind::reconcile:
          co_await answer_ranges(w->peer, std::move(*w->ranges));
          break;
      }
    }
  }

  // A sync request: by ranges when the owner reconciles, else a pull.
  void sync_with(const std::string& peer) {
    if (reconciling()) return start_reconcile(peer);
    pull_from(peer);
  }

  void pull_from(const std::string& peer) {
    ++counters.pulls_sent;
    host->net.send(peer, channel::replica, encode(replica_pull{name}));
  }

  // Why anti-entropy: full sync runs on start and on peer_up only, and what
  // a node learns by full sync is not re-broadcast. After a partition heals,
  // a node whose links survived the split gets no peer_up and would stay
  // behind; syncing with a random peer now and then closes that gap, and
  // since merge is idempotent, repeats are harmless. With range
  // reconciliation a round between equal states is one fingerprint.
  task<> run_anti_entropy() {
    const auto& cfg = host->config;
    while (!stopped) {
      if (!co_await host->sched.sleep(jittered(cfg.anti_entropy_interval, cfg.anti_entropy_jitter, host->rng)))
        co_return;
      auto peers = host->membership.active_view();
      if (peers.empty()) continue;
      ++counters.anti_entropy_rounds;
      sync_with(peers[std::uniform_int_distribution<std::size_t>(0, peers.size() - 1)(host->rng)].id);
    }
  }

};

bool replica_host::impl::on_message(const std::string& from, const byte_slice& body) {
  if (stopped) return true;
  // A snapshot goes to its owner as the bytes it came in: found, checked
  // and kept without decoding it here.
  if (auto view = parse_sync_view(body.bytes())) {
    if (auto instance = find(view->name)) {
      work_item w{work_item::kind::snapshot, {}, from, body.size()};
      w.cbor = body.sub(view->offset, view->length);
      instance->enqueue(std::move(w));
    }
    return true;
  }
  auto parsed = parse_replica_message(body.bytes(), {}, config.range_sync);
  if (parsed.error == replica_parse_error::not_cbor) return false;  // not a message: cut the peer off
  auto instance = parsed.name.empty() ? nullptr : find(parsed.name);
  if (!parsed.message) {
    if (instance) ++instance->counters.bad_messages;
    log("dropped a replica message of unknown shape from " + from);
    return true;
  }
  if (!instance) {  // not started on this node (yet)
    auto* rc = std::get_if<replica_reconcile>(&*parsed.message);
    if (rc && rc->message.opening) keep_early_opening(from, parsed.name, rc->message);
    return true;
  }
  if (auto* sync = std::get_if<replica_sync>(&*parsed.message)) {
    instance->enqueue({work_item::kind::snapshot, std::move(sync->snapshot), from, body.size()});
  } else if (auto* part = std::get_if<replica_part>(&*parsed.message)) {
    ++instance->counters.sync_parts_received;
    const auto assembled = part->parts * config.sync_chunk_bytes;  // at most
    if (auto whole = on_part(from, *part, instance->counters)) {
      work_item w{work_item::kind::snapshot, {}, from, assembled};
      if (auto* bytes = std::get_if<byte_slice>(&*whole)) w.cbor = std::move(*bytes);
      else w.body = std::move(std::get<json>(*whole));
      instance->enqueue(std::move(w));
    }
  } else if (auto* rc = std::get_if<replica_reconcile>(&*parsed.message)) {
    ++instance->counters.reconcile_received;
    if (!instance->take_reconcile(from, rc->message)) return true;
    work_item w{work_item::kind::reconcile, {}, from, body.size()};
    w.ranges = std::move(rc->message);
    instance->enqueue(std::move(w));
  } else if (instance->reconciling()) {
    // A pull, to an owner that reconciles: answered with one fingerprint,
    // not the whole state (a 20-byte pull must not cost a snapshot).
    instance->start_reconcile(from);
  } else {
    instance->enqueue({work_item::kind::push_to, {}, from});
  }
  return true;
}

std::optional<work_item_body> replica_host::impl::on_part(const std::string& from, replica_part& part,
                                                          replica_counters& counters) {
  const auto& name = part.name;
  const auto key = std::make_pair(from, name);
  const auto refuse = [&](const std::string& why) -> std::optional<work_item_body> {
    assemblies.erase(key);
    ++counters.bad_messages;
    log.sub(name)("dropped a snapshot part from " + from + ": " + why);
    return std::nullopt;
  };
  const auto index = part.index;
  const auto parts = part.parts;
  const auto& slice = part.bytes;
  if (parts < 2 || index >= parts || slice.empty()) return refuse("bad part numbers");
  if (index != 0 && !assemblies.contains(key)) {
    // A snapshot whose first part this instance never saw (it started
    // after the part was sent, or an earlier part ended the assembly): not
    // an error; the next pull or peer_up brings a whole one.
    return std::nullopt;
  }
  if (index == 0) drop_disconnected_assemblies();  // before this one may add up to max_snapshot_bytes
  auto& a = assemblies[key];
  if (index == 0) a = assembly{part.id, parts, 0, {}};
  // Parts arrive in order on one connection: anything else is a gap (a
  // dropped part) or a forgery, and ends this snapshot.
  if (a.id != part.id || a.parts != parts || a.next != index) return refuse("out of sequence");
  if (a.bytes.size() + slice.size() > config.max_snapshot_bytes) return refuse("over max_snapshot_bytes");
  a.bytes.insert(a.bytes.end(), slice.begin(), slice.end());
  if (++a.next < a.parts) return std::nullopt;
  auto bytes = share_bytes(a.bytes);
  assemblies.erase(key);
  // Checked, not decoded: the owner reads it (apply_full_sync_cbor).
  cbor_reader check(bytes.bytes());
  std::size_t items = config.max_snapshot_items;
  if (check.item(64, items) && check.at_end()) return work_item_body{byte_slice(std::move(bytes))};
  // An encoding the check does not take (indefinite lengths) still decodes.
  cbor_error error;
  auto whole = decode_cbor(bytes.bytes(), cbor_limits{64, config.max_snapshot_items}, &error);
  if (!whole) return refuse("reassembled snapshot does not decode: " + error.reason);
  return work_item_body{std::move(*whole)};
}

void replica_host::impl::on_membership(const membership_event& ev) {
  if (stopped) return;
  if (ev.what == membership_event::kind::peer_down) {
    std::erase_if(assemblies, [&](const auto& entry) { return entry.first.first == ev.peer.id; });
    std::erase_if(early_openings, [&](const auto& entry) { return entry.first.first == ev.peer.id; });
  }
  for (auto& [name, weak] : instances) {
    auto instance = weak.lock();
    if (!instance) continue;
    // One sync per connection: with range reconciliation, the side with
    // the smaller id opens it (the exchange moves data both ways); else
    // each side pushes its snapshot.
    if (ev.what == membership_event::kind::peer_up && instance->reconciling()) {
      if (membership.self().id < ev.peer.id) instance->start_reconcile(ev.peer.id);
    } else if (ev.what == membership_event::kind::peer_up) {
      instance->enqueue({work_item::kind::push_to, {}, ev.peer.id});
    }
    else if (ev.what == membership_event::kind::peer_down) {
      instance->opened_to.erase(ev.peer.id);
      instance->enqueue({work_item::kind::node_down, {}, ev.peer.id});
    }
  }
}

replica_host::replica_host(transport& net, hyparview& membership, plumtree& broadcast,
                           scheduler& sched, hlc_clock& clock, replica_config config)
    : impl_(std::make_shared<impl>(net, membership, broadcast, sched, clock, std::move(config))) {}

replica_host::~replica_host() {
  impl_->stopped = true;
  if (impl_->started) {
    impl_->net.on_message(channel::replica, nullptr);
    impl_->net.on_send_progress(nullptr);
  }
  impl_->release_room_waiters();  // each resumes by a post, never in here
  impl_->loops.cancel();
}

void replica_host::start() {
  auto* h = impl_.get();
  if (h->started) return;
  h->started = true;
  h->net.on_message(channel::replica, [h](const std::string& from, const byte_slice& body) { return h->on_message(from, body); });
  h->net.on_send_progress([h](const std::string& peer, std::size_t bytes) { h->on_send_progress(peer, bytes); });
  std::weak_ptr<impl> weak = impl_;
  h->membership.add_listener([weak](const membership_event& ev) {
    if (auto p = weak.lock()) p->on_membership(ev);
  });
  h->loops.spawn("replica_room_recheck", impl::room_recheck_loop(impl_));
  h->loops.spawn("replica_partial_snapshot_sweep", [self = impl_]() -> task<> {
    while (!self->stopped) {
      const bool elapsed = co_await self->sched.sleep(self->sweep_period);
      if (!elapsed) break;
      self->drop_disconnected_assemblies();
    }
  });
}

task<> replica_host::stop() {
  std::vector<std::shared_ptr<replica::impl>> live;
  for (auto& [name, weak] : impl_->instances)
    if (auto p = weak.lock()) live.push_back(p);
  for (auto& p : live) {
    p->stopped = true;
    impl_->broadcast.unsubscribe(p->name);
    p->inbox_in.close();
    co_await p->loops.stop();
  }
  impl_->instances.clear();
  impl_->assemblies.clear();
  impl_->stopped = true;
  impl_->release_room_waiters();
  co_await impl_->loops.stop();
}

std::size_t replica_host::kept_openings() const { return impl_->early_openings.size(); }

std::size_t replica_host::partial_snapshot_bytes() const {
  std::size_t n = 0;
  for (const auto& [key, a] : impl_->assemblies) n += a.bytes.size();
  return n;
}

void replica_host::set_write_guard(std::function<void()> guard) { impl_->write_guard = std::move(guard); }

std::shared_ptr<replica> replica::start(replica_host& host, std::string name, replica_callbacks& callbacks) {
  auto h = host.impl_;
  if (name.empty()) throw std::invalid_argument("replica: empty instance name");
  if (h->find(name)) throw std::invalid_argument("replica: an instance named '" + name + "' is already running on this node");
  auto i = std::make_shared<impl>(h, name, callbacks);
  // The name is the broadcast tag; plumtree refuses a second subscriber.
  std::weak_ptr<impl> weak = i;
  h->broadcast.subscribe(name, [weak](const plumtree::delivery& d) {
    if (auto p = weak.lock()) p->on_broadcast(d.payload, std::string(d.from));
  });
  h->instances[name] = i;
  i->loops.spawn("replica_inbox", impl::inbox_loop(i));
  if (callbacks.anti_entropy()) i->loops.spawn("anti_entropy", impl::anti_entropy_loop(i));
  // Late start: peers already connected send no peer_up, so sync with them:
  // answer an exchange a peer opened before we started, else open one.
  for (const auto& d : h->membership.active_view()) {
    auto early = h->early_openings.find({d.id, name});
    if (early != h->early_openings.end() && i->reconciling()) {
      work_item w{work_item::kind::reconcile, {}, d.id, 0};
      w.ranges = std::move(early->second);
      i->enqueue(std::move(w));
    } else {
      i->sync_with(d.id);
    }
  }
  std::erase_if(h->early_openings, [&](const auto& entry) { return entry.first.second == name; });
  return std::shared_ptr<replica>(new replica(i));
}

replica::replica(std::shared_ptr<impl> i) : impl_(std::move(i)) {}

replica::~replica() {
  auto& i = *impl_;
  if (!i.stopped) {
    i.stopped = true;
    i.host->broadcast.unsubscribe(i.name);
    i.host->instances.erase(i.name);
    i.host->forget_assemblies(i.name);
    i.inbox_in.close();
    i.loops.cancel();
    i.loads.clear();
  }
}

namespace {
// A write let through by wait_for_room, until its broadcast is queued.
struct room_ticket {
  explicit room_ticket(std::size_t& n) : admitted(n) { ++admitted; }
  ~room_ticket() { --admitted; }
  room_ticket(const room_ticket&) = delete;
  room_ticket& operator=(const room_ticket&) = delete;
  std::size_t& admitted;
};
}  // namespace

task<> replica::broadcast_update(replica_update update) {
  auto i = impl_;
  if (i->stopped) throw std::logic_error("replica " + i->name + ": stopped");
  if (co_await i->host->wait_for_room()) ++i->counters.backpressure_waits;
  const room_ticket ticket(i->host->admitted);
  if (i->stopped) throw std::logic_error("replica " + i->name + ": stopped");
  if (i->host->write_guard) i->host->write_guard();
  ormap scratch;
  const auto ts = i->host->clock.now();
  const ormap delta = std::visit(
      [&](auto& u) {
        if constexpr (std::is_same_v<std::decay_t<decltype(u)>, replica_add>)
          return scratch.add(u.key, std::move(u.value), i->host->net.self().id, ts);
        else
          return scratch.remove(u.key, ts);
      },
      update);
  json wire = crdt_wire::encode_map(delta);
  co_await i->callbacks.merge_delta(i->name, wire);  // throws to the caller: nothing is sent
  ++i->counters.deltas_sent;
  i->host->broadcast.broadcast(i->name, encode_delta_payload(wire));
}

task<> replica::broadcast_custom(json payload) {
  auto i = impl_;
  if (i->stopped) throw std::logic_error("replica " + i->name + ": stopped");
  if (co_await i->host->wait_for_room()) ++i->counters.backpressure_waits;
  const room_ticket ticket(i->host->admitted);
  if (i->stopped) throw std::logic_error("replica " + i->name + ": stopped");
  co_await i->callbacks.merge_custom(i->name, payload);  // throws to the caller: nothing is sent
  ++i->counters.customs_sent;
  i->host->broadcast.broadcast(i->name, encode_custom_payload(payload));
}

task<> replica::publish_delta(const json& delta) {
  // Encoded before waiting: the caller's json need not outlive the wait.
  co_await publish_delta(encode_delta_payload(delta));
}

task<> replica::publish_delta(shared_bytes payload) {
  auto i = impl_;
  if (i->stopped) throw std::logic_error("replica " + i->name + ": stopped");
  if (co_await i->host->wait_for_room()) ++i->counters.backpressure_waits;
  if (i->stopped) co_return;  // closed while waiting: applied locally, synced on the next start
  ++i->counters.deltas_sent;
  i->host->broadcast.broadcast(i->name, std::move(payload));
}

void replica_host::impl::forget_assemblies(const std::string& name) {
  std::erase_if(assemblies, [&](const auto& entry) { return entry.first.second == name; });
}

void replica::request_sync(const std::string& peer_id) { impl_->sync_with(peer_id); }

void replica::request_sync() {
  for (const auto& d : impl_->host->membership.active_view()) impl_->sync_with(d.id);
}

task<> replica::stop() {
  auto i = impl_;
  if (i->stopped) co_return;
  i->stopped = true;
  i->host->broadcast.unsubscribe(i->name);
  i->host->instances.erase(i->name);
  i->host->forget_assemblies(i->name);
  i->inbox_in.close();
  co_await i->loops.stop();
  i->loads.clear();  // whatever was left queued: its holds go too
}

const std::string& replica::name() const { return impl_->name; }
const replica_counters& replica::counters() const { return impl_->counters; }

}  // namespace barrel_p2p
