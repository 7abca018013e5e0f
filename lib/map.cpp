#include "barrel_p2p/map.hpp"
#include "barrel_p2p/log.hpp"

#include "barrel_p2p/crdt_wire.hpp"
#include "barrel_p2p/replica_messages.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "log_limiter.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <limits>
#include <atomic>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

namespace barrel_p2p {

namespace {

bool safe_name(const std::string& name) {
  if (name.empty() || name.size() > 200 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

}  // namespace

// The map's state lives here; the impl is also the replica owner.
struct map::impl final : replica_callbacks, std::enable_shared_from_this<map::impl> {
  node& n;
  std::string name;
  map_options options;
  // Changed on the strand only, under `mu` held exclusively; read on the
  // strand freely and elsewhere under `mu` shared. One copy of each value:
  // no projection beside it.
  ormap state;
  std::unique_ptr<map_store> store;
  std::shared_ptr<replica> rep;
  event_publisher<map_event> events;
  task_group loops;
  executor strand;  // the node's, kept so a closed map never touches a gone node
  std::filesystem::path dir;  // with persist: where the files are
  std::atomic<bool> closed{false};

  // Guards `state` against readers off the strand, and the counters.
  mutable std::shared_mutex mu;
  map_counters counts;

  impl(node& nd, std::string nm, map_options o)
      : n(nd),
        name(std::move(nm)),
        options(std::move(o)),
        events(nd.get_executor()),
        loops(nd.get_executor()),
        strand(nd.get_executor()),
        log(nd.config().log, nd.id(), "map " + name) {}

  void check_open() const {
    if (closed) throw map_error("map " + name + " is closed on this node");
  }

  crdt_wire::leaf_validator leaf() const {
    if (!options.validator) return {};
    return [v = options.validator](const std::string& k, const json& value) { return v(k, value); };
  }

  // With the node's id and sink copied at open: store lines are posted and
  // may run after the node is gone (a crash with writes in flight; the
  // nemesis found it).
  logger log;

  // Follows up what a merge of peer data changed (already in `state`):
  // disk (queued to the store's writer thread), then events.
  // `removed_values` are the positions in `changed` where a tombstone
  // replaced a value; other tombstones change no live value.
  // Costs in proportion to the change, never to the size of the map.
  void apply_changes(const std::vector<std::string>& changed, const std::vector<std::size_t>& removed_values) {
    std::vector<map_event> out;
    const bool announce = events.has_subscribers();
    std::size_t applied = 0;
    auto removal = removed_values.begin();
    for (std::size_t i = 0; i < changed.size(); ++i) {
      const auto& key = changed[i];
      const bool removed = removal != removed_values.end() && *removal == i;
      if (removed) ++removal;
      const auto* e = changed_entry(key, removed);
      if (!e) continue;
      ++applied;
      if (announce) out.push_back(event_of(key, *e));
    }
    if (applied > 0) {
      std::unique_lock lock(mu);
      counts.remote_changes += applied;
    }
    if (store) {
      for (const auto& key : changed)
        if (const auto* e = state.get_entry(key)) store->append(key, *e);
      maybe_compact();
    }
    for (auto& ev : out) events.publish(std::move(ev));
  }

  // apply_changes for one local write, without its vectors (the put path):
  // the write is on disk already; what is left is compaction and the event.
  void applied_local(const std::string& key, bool removed_value) {
    if (store) maybe_compact();
    if (!events.has_subscribers()) return;
    if (const auto* e = changed_entry(key, removed_value)) events.publish(event_of(key, *e));
  }

  // A merged key's new entry when subscribers hear of it: a value, or a
  // tombstone that replaced a value (other tombstones change nothing live).
  const entry* changed_entry(const std::string& key, bool removed_value) const {
    const auto* e = state.get_entry(key);
    return e && (std::holds_alternative<value_entry>(*e) || removed_value) ? e : nullptr;
  }
  static map_event event_of(const std::string& key, const entry& e) {
    if (const auto* v = std::get_if<value_entry>(&e)) return {map_event::kind::put, key, v->payload};
    return {map_event::kind::remove, key, nullptr};
  }

  // Compact once the log holds as many records as the map has entries (and
  // at least snapshot_every): each compaction rewrites the whole map, so
  // its cost stays constant per write.
  void maybe_compact() {
    if (store->log_records() >= std::max<std::uint64_t>(options.snapshot_every, state.entry_count()))
      store->compact();
  }

  void ingest(const json& incoming) { merged(crdt_wire::ingest(state, incoming, n.clock(), leaf(), {}, &mu)); }
  // What an ingest did: counted, reported, then applied.
  void merged(const crdt_wire::ingest_result& r) {
    if (r.why.total > 0) {
      std::unique_lock lock(mu);
      counts.rejected_remote += r.why.total;
      counts.rejected_clock_ahead += r.why.clock_ahead;
    }
    if (r.why.clock_ahead > 0) report_clock_ahead(r.why);
    apply_changes(r.changed, r.removed_values);
  }

  // Entries refused for a timestamp too far ahead are data a peer holds and
  // this node does not: say so, at most once a minute, with the numbers.
  detail::log_limiter ahead_log;
  std::uint64_t ahead_since_report = 0;
  std::uint64_t max_ahead_since_report = 0;
  std::string ahead_writer;
  void report_clock_ahead(const crdt_wire::rejections& why) {
    ahead_since_report += why.clock_ahead;
    if (why.max_ahead_ms >= max_ahead_since_report) {
      max_ahead_since_report = why.max_ahead_ms;
      if (!why.ahead_writer.empty()) ahead_writer = why.ahead_writer;
    }
    if (!ahead_log.allow(n.sched().now(), std::chrono::minutes(1))) return;
    log("refused " + std::to_string(ahead_since_report) + " peer entries stamped up to " +
        std::to_string(max_ahead_since_report) + " ms ahead of this node's clock (maximum offset " +
        std::to_string(n.clock().max_offset().count()) + " ms)" +
        (ahead_writer.empty() ? std::string() : "; written by " + ahead_writer) +
        ": that writer's clock runs ahead, or this one behind (see /status \"clock\")");
    ahead_since_report = 0;
    max_ahead_since_report = 0;
    ahead_writer.clear();
  }

  // ---- replica_callbacks ----------------------------------------------------
  task<> merge_delta(const std::string&, const json& delta) override {
    ingest(delta);
    co_return;
  }
  task<> apply_full_sync(const std::string&, const json& snapshot) override {
    ingest(snapshot);
    co_return;
  }
  // A snapshot read straight from its bytes; an encoding ingest_cbor does
  // not take goes the json way.
  task<> apply_full_sync_cbor(const std::string& instance, std::span<const std::uint8_t> snapshot) override {
    constexpr cbor_limits checked{64, std::numeric_limits<std::size_t>::max()};  // the driver checked them
    if (auto r = crdt_wire::ingest_cbor(state, snapshot, n.clock(), leaf(), {}, checked, &mu)) {
      merged(*r);
      co_return;
    }
    co_await replica_callbacks::apply_full_sync_cbor(instance, snapshot);
  }
  // Range reconciliation: the state's items, tracked since open().
  const sync_index* sync_items(const std::string&) override { return state.sync_items(); }
  task<std::optional<std::vector<std::uint8_t>>> snapshot_cbor_of(const std::string&,
                                                                  const std::vector<sync_item>& items) override {
    co_return crdt_wire::write_items(state, items);
  }
  task<std::optional<json>> full_sync_snapshot(const std::string&) override {
    if (state.entry_count() == 0) co_return std::nullopt;
    co_return crdt_wire::encode_map(state);
  }
  task<> remove_node(const std::string&, const std::string& node_id) override {
    if (!options.prune_on_peer_down) co_return;
    // Found without the lock (only this strand changes the state), then
    // dropped under it: readers wait for the drops, not for the scan.
    auto dropped = state.values_by(node_id);
    std::vector<map_event> out;
    {
      std::unique_lock lock(mu);
      std::erase_if(dropped, [&](const auto& kd) { return !state.remove_value_if(kd.first, kd.second); });
      counts.pruned += dropped.size();
    }
    if (events.has_subscribers())
      for (const auto& [key, d] : dropped) out.push_back({map_event::kind::remove, key, nullptr});
    // Logged, so a restart does not bring them back (nobody awaits it: a
    // prune is not acknowledged to anyone).
    if (store && !dropped.empty()) {
      for (const auto& [key, d] : dropped) store->append_drop(key, d);
      maybe_compact();
    }
    for (auto& ev : out) events.publish(std::move(ev));
  }
  bool anti_entropy() const override { return true; }  // whole-state snapshots, tombstoned removes

  // ---- writes (on the strand) -------------------------------------------------
  // The forward path: the write is merged here, typed, stamped by the
  // node's clock; then its delta is encoded once and handed down to the
  // replica to gossip. Peer data takes the other way up (merge_delta).
  task<> write(const std::string& key, std::optional<json> value) {
    check_open();
    if (store) check_store();       // a failed disk: refuse before changing anything
    n.clocks().check_writable();  // a clock far ahead: peers would drop this write
    const auto ts = n.clock().now();
    entry e = value ? entry(value_entry{std::move(*value), {n.id(), ts}}) : entry(tombstone{ts});
    auto payload = encode_delta_payload(key, e);  // the one encoding of this write
    if (store) {
      // Durable first: a write the disk refuses is never applied, read or
      // gossiped. The writer thread fsyncs; this coroutine waits without
      // holding the executor, and concurrent puts share one fsync.
      const auto seq = store->append(key, e);
      try {
        co_await store->durable(seq);
      } catch (const std::system_error&) {
        note_write_failure();
        throw;
      }
      if (closed) co_return;  // on disk: the next open loads and syncs it
    }
    // Merged after the wait: a newer peer write that came meanwhile still wins.
    ormap::merge_result merged;
    {
      std::unique_lock lock(mu);
      merged = state.merge_entry(key, std::move(e));
    }
    if (merged) applied_local(key, merged.removed_value);
    co_await rep->publish_delta(std::move(payload));
  }

  void check_store() {
    try {
      store->check();
    } catch (const std::system_error&) {
      note_write_failure();
      throw;
    }
  }

  void note_write_failure() {
    std::unique_lock lock(mu);
    ++counts.write_failures;
  }

  // Under the unique lock: counters() reads the store from any thread.
  void close_store() {
    std::unique_ptr<map_store> closing;
    {
      std::unique_lock lock(mu);
      closing = std::move(store);
    }
    closing.reset();  // joins the store's threads, readers not held up
  }

  static task<> do_put(std::shared_ptr<impl> self, std::string key, json value) {
    if (key.size() > crdt_wire::limits{}.max_key_bytes)
      throw map_error("map " + self->name + ": key longer than " +
                      std::to_string(crdt_wire::limits{}.max_key_bytes) + " bytes");
    if (self->options.validator && !self->options.validator(key, value)) {
      {
        std::unique_lock lock(self->mu);
        ++self->counts.rejected_local;
      }
      throw map_error("map " + self->name + ": the validator refused the value for key '" + key + "'");
    }
    co_await self->write(key, std::move(value));
    std::unique_lock lock(self->mu);
    ++self->counts.puts;
  }

  static task<> do_remove(std::shared_ptr<impl> self, std::string key) {
    if (key.size() > crdt_wire::limits{}.max_key_bytes)
      throw map_error("map " + self->name + ": key longer than " +
                      std::to_string(crdt_wire::limits{}.max_key_bytes) + " bytes");
    co_await self->write(key, std::nullopt);
    std::unique_lock lock(self->mu);
    ++self->counts.removes;
  }

  // Why a sweep: tombstones must outlive every delayed add they guard
  // against, but not forever; past the TTL they only cost memory.
  static task<> sweep_loop(std::shared_ptr<impl> self) {
    while (!self->closed) {
      if (!co_await self->n.sched().sleep(self->options.tombstone_sweep_interval)) co_return;
      const auto ttl = static_cast<std::uint64_t>(self->options.tombstone_ttl.count());
      const auto wall = self->n.sched().wall_ms();
      if (wall <= ttl) continue;
      // As for a prune: found without the lock, dropped under it.
      const auto expired = self->state.expired_tombstones(wall - ttl);
      if (expired.empty()) continue;
      std::unique_lock lock(self->mu);
      for (const auto& key : expired) self->counts.tombstones_swept += self->state.gc_tombstone(key, wall - ttl);
    }
  }

  static task<> do_close(std::shared_ptr<impl> self) {
    if (self->closed.exchange(true)) co_return;
    co_await self->rep->stop();
    co_await self->loops.stop();
    if (self->store) {
      try {
        co_await self->store->flush();
      } catch (const std::exception&) {
        // A failed disk: already logged by the store, and every write since
        // was refused to its caller. Closing still closes.
      }
      self->close_store();  // the writer is idle now
    }
    self->events.close();
    self->n.clear_attachment<map>(self->name);
  }
};

std::shared_ptr<map> map::open(node& n, const std::string& name, map_options options) {
  if (!safe_name(name))
    throw map_error("map name '" + name + "' must be 1-200 characters of [A-Za-z0-9._-]");
  if (options.tombstone_ttl <= duration{0} || options.tombstone_sweep_interval <= duration{0} ||
      options.snapshot_every == 0)
    throw map_error("map " + name + ": tombstone_ttl, tombstone_sweep_interval and snapshot_every must be positive");
  if (auto existing = n.find_attachment<map>(name)) return existing;
  if (options.persist && n.config().data_dir.empty())
    throw map_error("map " + name + ": persist needs the node's data_dir");

  auto i = std::make_shared<impl>(n, name, std::move(options));
  i->state.track_sync_items();
  if (i->options.persist) {
    i->dir = n.config().data_dir / "maps" / name;
    // Weak: the store's lines are posted to the executor and may run after
    // the map is gone (a map destroyed without close()).
    std::weak_ptr<impl> weak = i;
    i->store = std::make_unique<map_store>(
        i->dir, n.get_executor(),
        [weak](const std::string& line) {
          if (auto self = weak.lock()) self->log(line);
        },
        i->options.disk_faults, n.simulated() ? store_mode::inline_writes : store_mode::writer_thread);
    // Recovered entries go through the same validation as peer data, but
    // not the forward-offset check: this node accepted or wrote them
    // before, and a write acknowledged while its clock ran ahead must not
    // vanish at restart (the nemesis found it: seed 29). The node's clock
    // moves past them, so its own later writes are not ordered behind
    // them. Once the clock monitor has measured its peers it refuses local
    // writes until the cluster's clocks catch up (before that, writes are
    // stamped ahead too); peers take such entries once their clocks admit
    // them.
    hlc_clock recovery_clock([&n] { return n.clock().wall_ms(); }, std::chrono::hours(24 * 365 * 100));
    auto r = crdt_wire::ingest(i->state, i->store->recovered(), recovery_clock, i->leaf());
    const auto newest = recovery_clock.last();
    const auto wall = n.clock().wall_ms();
    if (newest.wall_ms > wall + static_cast<std::uint64_t>(n.clock().max_offset().count()))
      i->log("recovered entries stamped up to " + std::to_string((newest.wall_ms - wall) / 1000) +
             " s ahead of this clock: kept; peers take them once their clocks admit them");
    n.clock().restore(newest);
    if (r.why.total) i->log("dropped " + std::to_string(r.why.total) + " invalid recovered entries");
  }
  i->rep = replica::start(n.replicas(), name, *i);
  i->loops.spawn("tombstone_sweep", impl::sweep_loop(i));
  auto m = std::make_shared<map>(i);
  n.set_attachment(m, name);
  return m;
}

map::map(std::shared_ptr<impl> i) : impl_(std::move(i)) {}

map::~map() { on_node_destroyed(); }

void map::on_node_destroyed() noexcept {
  // Without close(): stop taking callbacks; the replica instance goes now,
  // while the node's replica host still exists.
  if (!impl_->closed.exchange(true)) {
    impl_->loops.cancel();
    impl_->events.close();
    impl_->rep.reset();
    impl_->close_store();  // writes and fsyncs what is queued
  }
}

namespace {

// Runs `work` on the node's strand: callers may be on any executor. One
// already on it (co_spawned on node::get_executor()) runs it inline,
// without co_spawn onto the strand and the completion back: 1.8-2.1
// against 5.0-5.3 us a put in `barrel-p2p-bench --only micro`.
task<> on_strand(const executor& strand, task<> work) {
  const auto current = co_await boost::asio::this_coro::executor;
  if (current == strand) {
    co_await std::move(work);
  } else {
    co_await boost::asio::co_spawn(strand, std::move(work), boost::asio::use_awaitable);
  }
}

}  // namespace

task<> map::put(std::string key, json value) {
  impl_->check_open();
  co_await on_strand(impl_->strand, impl::do_put(impl_, std::move(key), std::move(value)));
}

task<> map::remove(std::string key) {
  impl_->check_open();
  co_await on_strand(impl_->strand, impl::do_remove(impl_, std::move(key)));
}

std::optional<json> map::get(const std::string& key) const {
  std::shared_lock lock(impl_->mu);
  return impl_->state.get(key);
}

std::vector<std::string> map::keys() const {
  std::vector<std::string> out;
  {
    std::shared_lock lock(impl_->mu);
    out.reserve(impl_->state.live_size());
    for (const auto& [k, e] : impl_->state.entries())
      if (std::holds_alternative<value_entry>(e)) out.push_back(k);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::pair<std::string, json>> map::to_list() const {
  std::vector<std::pair<std::string, json>> out;
  {
    std::shared_lock lock(impl_->mu);
    out.reserve(impl_->state.live_size());
    for (const auto& [k, e] : impl_->state.entries())
      if (const auto* v = std::get_if<value_entry>(&e)) out.emplace_back(k, v->payload);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

map_page map::page(std::size_t limit, const std::optional<std::string>& after) const {
  map_page out;
  // The `limit` smallest keys past `after`, in a max-heap of pointers into
  // the map: no key or value is copied until the page is known.
  const auto greater_key = [](const auto* a, const auto* b) { return a->first < b->first; };
  std::vector<const ormap::container::value_type*> heap;
  std::shared_lock lock(impl_->mu);
  out.size = impl_->state.live_size();
  std::size_t candidates = 0;
  if (limit > 0) heap.reserve(std::min(limit, out.size));
  for (const auto& kv : impl_->state.entries()) {
    if (!std::holds_alternative<value_entry>(kv.second)) continue;
    if (after && kv.first <= *after) continue;
    ++candidates;
    if (limit == 0) continue;
    if (heap.size() < limit) {
      heap.push_back(&kv);
      std::push_heap(heap.begin(), heap.end(), greater_key);
    } else if (kv.first < heap.front()->first) {
      std::pop_heap(heap.begin(), heap.end(), greater_key);
      heap.back() = &kv;
      std::push_heap(heap.begin(), heap.end(), greater_key);
    }
  }
  std::sort_heap(heap.begin(), heap.end(), greater_key);
  out.more = candidates > heap.size();
  out.entries.reserve(heap.size());
  for (const auto* kv : heap) out.entries.emplace_back(kv->first, std::get<value_entry>(kv->second).payload);
  return out;
}

std::size_t map::size() const {
  std::shared_lock lock(impl_->mu);
  return impl_->state.live_size();
}

event_stream<map_event> map::subscribe(std::size_t capacity) { return impl_->events.subscribe(capacity); }

task<> map::close() {
  if (impl_->closed) co_return;
  co_await boost::asio::co_spawn(impl_->strand, impl::do_close(impl_), boost::asio::use_awaitable);
}

task<> map::erase() {
  co_await close();
  std::error_code ec;
  if (!impl_->dir.empty()) std::filesystem::remove_all(impl_->dir, ec);
}

task<> map::on_node_stop() { co_await close(); }

const std::string& map::name() const { return impl_->name; }
bool map::is_open() const { return !impl_->closed; }

map_counters map::counters() const {
  std::shared_lock lock(impl_->mu);
  auto c = impl_->counts;
  c.store_failed = impl_->store && impl_->store->stats().failed ? 1 : 0;
  return c;
}

replica_counters map::replica_stats() const { return impl_->rep ? impl_->rep->counters() : replica_counters{}; }

std::size_t map::entry_count() const {
  std::shared_lock lock(impl_->mu);
  return impl_->state.entry_count();
}

}  // namespace barrel_p2p
