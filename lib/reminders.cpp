#include "barrel_p2p/reminders.hpp"

#include "barrel_p2p/map.hpp"
#include "barrel_p2p/placement.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "consumer_wire.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <map>
#include <set>
#include <stdexcept>
#include <unordered_map>

namespace barrel_p2p {

namespace {

constexpr const char* store_name = "barrel_p2p.reminders";
constexpr const char* group_name = "barrel_p2p.reminders";

namespace cw = detail::consumer_wire;
static_assert(reminders::max_name_bytes == cw::max_reminder_name_bytes &&
              reminders::max_payload_bytes == cw::max_reminder_payload_bytes &&
              reminders::max_time_ms == cw::max_reminder_time_ms && reminders::max_every_ms == cw::max_reminder_every_ms);

bool valid_name(const std::string& name) { return !name.empty() && name.size() <= reminders::max_name_bytes; }

json stored_value(std::uint64_t at, std::uint64_t every, json payload) {
  return detail::consumer_wire::reminder_value(at, every, std::move(payload));
}

bool valid_value(const std::string& key, const json& v) { return detail::consumer_wire::valid_reminder(key, v); }

reminder reminder_of(const std::string& name, const json& v) {
  return {name, v.at("at").get<std::uint64_t>(), v.at("e").get<std::uint64_t>(), v.at("p")};
}

}  // namespace

struct reminders::impl : std::enable_shared_from_this<reminders::impl> {
  node& n;
  executor strand;
  reminder_options options;
  std::shared_ptr<map> store;
  std::shared_ptr<placement> owners;
  task_group tasks;
  event_publisher<fired_reminder> fired;
  reminder_counters counters;

  // Due times, from the map's events: what the fire loop walks.
  std::set<std::pair<std::uint64_t, std::string>> due;
  std::unordered_map<std::string, std::uint64_t> due_of;
  struct delivery {
    std::uint64_t due_ms = 0;
    std::uint64_t fence = 0;
    std::uint32_t attempt = 0;
    duration deadline{};
  };
  std::unordered_map<std::string, delivery> in_flight;
  bool closed = false;

  impl(node& nd, reminder_options o) : n(nd), strand(nd.get_executor()), options(o), tasks(strand), fired(strand) {}

  void index(const std::string& name, std::optional<std::uint64_t> at) {
    if (auto it = due_of.find(name); it != due_of.end()) {
      due.erase({it->second, name});
      due_of.erase(it);
    }
    if (at) {
      due.emplace(*at, name);
      due_of[name] = *at;
    }
  }

  void rebuild_index() {
    due.clear();
    due_of.clear();
    for (const auto& [name, v] : store->to_list())
      if (valid_value(name, v)) index(name, v.at("at").get<std::uint64_t>());
  }

  // Follows the map: local and remote schedules, cancellations, completions.
  static task<> follow(std::shared_ptr<impl> self, event_stream<map_event> changes) {
    std::uint64_t dropped = 0;
    for (;;) {
      auto ev = co_await changes.next();
      if (!ev) break;
      if (changes.dropped() != dropped) {  // lost some: read the whole state again
        dropped = changes.dropped();
        self->rebuild_index();
        continue;
      }
      if (ev->what == map_event::kind::put && valid_value(ev->key, ev->value))
        self->index(ev->key, ev->value.at("at").get<std::uint64_t>());
      else {
        self->index(ev->key, std::nullopt);
        self->in_flight.erase(ev->key);
      }
    }
  }

  // Fires what is due in the shards this node owns.
  void fire_due() {
    const auto now_ms = n.clock().wall_ms();
    const auto now = n.sched().now();
    for (auto it = due.begin(); it != due.end() && it->first <= now_ms; ++it) {
      const auto& [at, name] = *it;
      const auto shard = owners->shard_of(name);
      const auto fence = owners->fence(shard);
      auto flight = in_flight.find(name);
      if (!fence) {
        if (flight != in_flight.end()) in_flight.erase(flight);
        continue;
      }
      if (flight != in_flight.end() && flight->second.due_ms == at && flight->second.fence == *fence &&
          now < flight->second.deadline)
        continue;  // delivered, waiting for complete()
      auto& d = in_flight[name];
      const bool again = d.due_ms == at && d.fence == *fence && d.attempt > 0;
      d.attempt = again ? d.attempt + 1 : 1;
      d.due_ms = at;
      d.fence = *fence;
      d.deadline = now + options.redeliver_after;
      const auto value = store->get(name);
      if (!value || !valid_value(name, *value)) continue;
      ++counters.fired;
      if (again) ++counters.redelivered;
      fired.publish(fired_reminder{name, value->at("p"), at, value->at("e").get<std::uint64_t>(), shard, *fence,
                                   d.attempt});
    }
  }

  // Sleeps first: a subscriber that opens and subscribes at once misses
  // nothing.
  static task<> fire_loop(std::shared_ptr<impl> self) {
    while (!self->closed) {
      const bool slept = co_await self->n.sched().sleep(self->options.tick);
      if (!slept) break;
      self->fire_due();
    }
  }

  static task<std::shared_ptr<reminders>> open_on_strand(node& n, reminder_options options) {
    if (auto existing = n.find_attachment<reminders>()) co_return existing;
    map_options mo;
    mo.persist = options.persist;
    mo.validator = valid_value;
    auto i = std::make_shared<impl>(n, options);
    i->store = map::open(n, store_name, mo);
    auto changes = i->store->subscribe(64 * 1024);
    i->rebuild_index();
    placement_options po;
    po.shards = options.shards;
    po.weight = options.weight;
    auto r = std::make_shared<reminders>(i);
    n.set_attachment(r);  // before the await: a concurrent open() finds it
    std::exception_ptr failed;
    try {
      i->owners = co_await placement::open(n, group_name, po);
    } catch (...) {
      failed = std::current_exception();
    }
    if (failed) {  // nothing half-open stays attached: a later open() starts afresh
      i->closed = true;
      n.clear_attachment<reminders>();
      std::rethrow_exception(failed);
    }
    i->tasks.spawn("reminders follow", follow(i, std::move(changes)));
    i->tasks.spawn("reminders fire", fire_loop(i));
    co_return r;
  }

  // The time after `r`'s due time it fires next: the first after now, so a
  // periodic reminder that missed runs (the cluster was down) fires once,
  // not once per missed period. Nullopt for a one-shot reminder, or when
  // the next time would be out of range.
  std::optional<std::uint64_t> next_time(const reminder& r) const {
    if (r.every_ms == 0) return std::nullopt;
    const auto now_ms = n.clock().wall_ms();
    auto next = r.at_ms + r.every_ms;
    if (next <= now_ms) next += ((now_ms - next) / r.every_ms + 1) * r.every_ms;
    if (next >= reminders::max_time_ms) return std::nullopt;
    return next;
  }

  static task<> do_complete(std::shared_ptr<impl> self, fired_reminder f) {
    // Only this delivery's record: a late complete() of an earlier due time
    // must not make the current delivery fire again.
    if (auto it = self->in_flight.find(f.name); it != self->in_flight.end() && it->second.due_ms == f.due_ms)
      self->in_flight.erase(it);
    if (self->closed) co_return;
    const auto current = self->store->get(f.name);
    if (!current || !valid_value(f.name, *current)) co_return;
    const auto r = reminder_of(f.name, *current);
    // Rescheduled since it fired (another time, period or payload): the new
    // schedule stands.
    if (r.at_ms != f.due_ms || r.every_ms != f.every_ms || r.payload != f.payload) co_return;
    ++self->counters.completed;
    const auto next = self->next_time(r);
    // The index moves now, not when the write's event comes back: a tick in
    // between (the write waits for the disk) would fire this due time again.
    self->index(f.name, next);
    std::exception_ptr failed;
    try {
      if (next) co_await self->store->put(f.name, stored_value(*next, r.every_ms, r.payload));
      else co_await self->store->remove(f.name);
    } catch (...) {
      failed = std::current_exception();
    }
    if (failed) {
      self->index(f.name, r.at_ms);  // still due: it fires again
      std::rethrow_exception(failed);
    }
  }

  static task<> do_schedule(std::shared_ptr<impl> self, std::string name, json value) {
    co_await self->store->put(std::move(name), std::move(value));
    ++self->counters.scheduled;
  }

  static task<bool> do_cancel(std::shared_ptr<impl> self, std::string name) {
    if (!self->store->get(name)) co_return false;
    co_await self->store->remove(std::move(name));
    ++self->counters.cancelled;
    co_return true;
  }

  static task<> do_stop(std::shared_ptr<impl> self) {
    if (self->closed) co_return;
    self->closed = true;
    self->fired.close();
    co_await self->tasks.stop();
  }
};

task<std::shared_ptr<reminders>> reminders::open(node& n, reminder_options options) {
  if (options.shards == 0 || options.shards > 65'536) throw std::invalid_argument("reminder shards must be 1 to 65536");
  if (options.tick <= duration{0} || options.tick > std::chrono::hours(1))
    throw std::invalid_argument("reminder tick must be positive and at most an hour");
  if (options.redeliver_after <= duration{0} || options.redeliver_after > std::chrono::hours(24))
    throw std::invalid_argument("reminder redeliver_after must be positive and at most a day");
  if (!(options.weight > 0) || options.weight > 1e6)
    throw std::invalid_argument("reminder weight must be greater than 0 and at most 1000000");
  co_return co_await boost::asio::co_spawn(n.get_executor(), impl::open_on_strand(n, options),
                                           boost::asio::use_awaitable);
}

reminders::reminders(std::shared_ptr<impl> i) : impl_(std::move(i)) {}

reminders::~reminders() { on_node_destroyed(); }

void reminders::on_node_destroyed() noexcept {
  impl_->closed = true;
  impl_->tasks.cancel();
  impl_->fired.close();
}

task<> reminders::on_node_stop() { co_await boost::asio::co_spawn(impl_->strand, impl::do_stop(impl_), boost::asio::use_awaitable); }

task<> reminders::schedule(std::string name, std::uint64_t at_ms, json payload, std::uint64_t every_ms) {
  if (!valid_name(name)) throw std::invalid_argument("reminder name must be 1-256 bytes");
  if (payload.dump().size() > max_payload_bytes) throw std::invalid_argument("reminder payload is over 64 KiB of JSON");
  if (at_ms >= max_time_ms) throw std::invalid_argument("reminder time is out of range");
  if (every_ms > max_every_ms) throw std::invalid_argument("reminder period is over a year");
  co_await boost::asio::co_spawn(
      impl_->strand, impl::do_schedule(impl_, std::move(name), stored_value(at_ms, every_ms, std::move(payload))),
      boost::asio::use_awaitable);
}

task<bool> reminders::cancel(std::string name) {
  co_return co_await boost::asio::co_spawn(impl_->strand, impl::do_cancel(impl_, std::move(name)),
                                           boost::asio::use_awaitable);
}

task<> reminders::complete(fired_reminder fired) {
  co_await boost::asio::co_spawn(impl_->strand, impl::do_complete(impl_, std::move(fired)),
                                 boost::asio::use_awaitable);
}

std::optional<reminder> reminders::get(const std::string& name) const {
  auto v = impl_->store->get(name);
  if (!v || !valid_value(name, *v)) return std::nullopt;
  return reminder_of(name, *v);
}

std::vector<reminder> reminders::list() const {
  std::vector<reminder> out;
  for (const auto& [name, v] : impl_->store->to_list())
    if (valid_value(name, v)) out.push_back(reminder_of(name, v));
  return out;
}

std::uint32_t reminders::shard_of(const std::string& name) const {
  return barrel_p2p::shard_of(name, impl_->options.shards);
}

std::optional<std::string> reminders::owner_of(const std::string& name) const {
  if (!impl_->owners) return std::nullopt;
  return impl_->owners->owner(shard_of(name));
}

event_stream<fired_reminder> reminders::subscribe(std::size_t capacity) { return impl_->fired.subscribe(capacity); }

reminder_counters reminders::counters() const { return impl_->counters; }

}  // namespace barrel_p2p
