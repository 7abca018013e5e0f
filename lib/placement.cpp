#include "barrel_p2p/placement.hpp"

#include "barrel_p2p/keyed_hash.hpp"
#include "barrel_p2p/log.hpp"
#include "barrel_p2p/registry.hpp"
#include "barrel_p2p/replica.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "consumer_wire.hpp"
#include "fencing.hpp"
#include "log_limiter.hpp"
#include "printable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cmath>
#include <map>
#include <stdexcept>

namespace barrel_p2p {

namespace {

// Fixed keys: every node and every build must hash alike (these are not
// secrets; a member choosing its id to win shards gains nothing it could
// not get with a larger weight).
constexpr siphash_key score_key{0x62617272656c5f70, 0x706c6163656d6e74};
constexpr siphash_key shard_key{0x62617272656c5f73, 0x68617264696e6721};

bool valid_group(const std::string& g) { return !g.empty() && g.size() <= 100 && g.find('\n') == std::string::npos; }

std::string service_of(const std::string& group) { return "barrel_p2p.placement/" + group; }

constexpr const char* member_endpoint = "member";

}  // namespace

double rendezvous_score(std::string_view group, std::string_view node, std::uint32_t shard, double weight) noexcept {
  std::string in;
  in.reserve(group.size() + node.size() + 16);
  in.append(group).push_back('\n');
  in.append(node).push_back('\n');
  in.append(std::to_string(shard));
  const auto h = siphash24(score_key, in);
  // A uniform draw in (0, 1) from the top 53 bits; the weighted score
  // -w / ln(u) picks each member with probability proportional to its weight
  // (weighted rendezvous hashing, Schindelhauer and Schomaker 2005).
  const double u = (static_cast<double>(h >> 11) + 0.5) / 9007199254740992.0;
  return -weight / std::log(u);
}

std::uint32_t shard_of(std::string_view key, std::uint32_t shards) noexcept {
  if (shards == 0) return 0;
  return static_cast<std::uint32_t>(siphash24(shard_key, key) % shards);
}

struct placement::impl final : replica_callbacks, std::enable_shared_from_this<placement::impl> {
  node& n;
  executor strand;
  std::string group;
  placement_options options;
  std::shared_ptr<registry> reg;
  std::shared_ptr<replica> rep;
  task_group tasks;
  std::map<std::string, double> members;
  std::vector<std::optional<std::string>> owners;
  std::map<std::uint32_t, std::uint64_t> mine;  // shard -> fence
  std::map<std::uint32_t, std::uint64_t> hwm;   // shard -> greatest token heard of
  event_publisher<shard_event> events;
  placement_counters counters;
  std::vector<std::string> ignored;  // members announced with another shard count or a bad weight
  detail::log_limiter ignored_log;
  logger logger_{n.config().log, n.id(), "placement"};
  bool computed = false;
  bool closed = false;

  impl(node& nd, std::string g, placement_options o)
      : n(nd), strand(nd.get_executor()), group(std::move(g)), options(o), tasks(strand),
        owners(o.shards), events(strand) {}

  const std::string& self() const { return n.id(); }

  void log(const std::string& what) { logger_("'" + detail::printable(group) + "': " + what); }

  // The member set from the registry: announcements of this group with the
  // same shard count and a sane weight.
  std::map<std::string, double> read_members() {
    std::map<std::string, double> out;
    ignored.clear();
    for (const auto& p : reg->lookup(service_of(group))) {
      if (auto w = detail::consumer_wire::member_weight(p.metadata, options.shards)) out[p.node] = *w;
      else ignored.push_back(p.node);
    }
    return out;
  }

  std::optional<std::string> best(std::uint32_t shard) const {
    std::optional<std::string> winner;
    double top = -1;
    for (const auto& [node, weight] : members) {
      const auto score = rendezvous_score(group, node, shard, weight);
      if (score > top) {  // ties (never in practice) go to the lower id: members are sorted
        top = score;
        winner = node;
      }
    }
    return winner;
  }

  // Recomputes every owner; acquires and releases this node's shards.
  void recompute() {
    if (closed) return;
    auto now_members = read_members();
    if (computed && now_members == members) return;
    if (computed) ++counters.member_changes;
    if (!ignored.empty()) {
      counters.ignored_members += ignored.size();
      if (ignored_log.allow(n.sched().now(), std::chrono::minutes(1)))
        log("ignored " + std::to_string(ignored.size()) + " member announcement(s) (first: '" +
            detail::printable(ignored.front()) + "'): another shard count or a bad weight");
    }
    computed = true;
    members = std::move(now_members);
    json marks = json::object();
    for (std::uint32_t s = 0; s < options.shards; ++s) {
      owners[s] = best(s);
      const bool ours = options.member && owners[s] == self();
      const auto held = mine.find(s);
      if (ours && held == mine.end()) {
        auto& mark = hwm[s];
        mark = detail::next_fence(n.clock(), mark, detail::fence_bits(n.id()));
        mine[s] = mark;
        marks[std::to_string(s)] = mark;
        ++counters.acquired;
        events.publish(shard_event{shard_event::kind::acquired, s, mark});
      } else if (!ours && held != mine.end()) {
        mine.erase(held);
        ++counters.released;
        events.publish(shard_event{shard_event::kind::released, s, 0});
      }
    }
    if (!marks.empty()) send_marks(std::move(marks));
  }

  void release_all() {
    for (const auto& [s, fence] : mine) {
      ++counters.released;
      events.publish(shard_event{shard_event::kind::released, s, 0});
    }
    mine.clear();
  }

  void send_marks(json marks) {
    json payload = json::object();
    payload["f"] = std::move(marks);
    boost::asio::co_spawn(strand, send_custom(shared_from_this(), std::move(payload)), boost::asio::detached);
  }
  static task<> send_custom(std::shared_ptr<impl> self, json payload) {
    if (self->closed || !self->rep) co_return;
    co_await self->rep->broadcast_custom(std::move(payload));
  }

  // Merges marks by max; returns those that went up. A mark no honest clock
  // could have issued is refused (it would push later tokens towards
  // UINT64_MAX), as leader election does.
  json merge_marks(const json& f) {
    json raised = json::object();
    for (const auto& [s, value] : detail::consumer_wire::parse_marks(f, options.shards)) {
      if (!n.clock().admissible(hlc_timestamp::unpack(value))) {
        ++counters.marks_refused;
        continue;
      }
      auto& mark = hwm[s];
      if (value > mark) {
        mark = value;
        raised[std::to_string(s)] = value;
      }
    }
    return raised;
  }

  // The registry's changes of this group's members, coalesced.
  static task<> watch_members(std::shared_ptr<impl> self, event_stream<service_event> changes) {
    while (auto ev = co_await changes.next()) {
      if (self->closed) break;
      // One recomputation for a burst (a sync brings many members at once).
      changes.discard_pending();
      self->recompute();
    }
  }

  // ---- replica_callbacks: the fencing marks ------------------------------------
  task<> merge_delta(const std::string&, const json&) override { co_return; }
  task<> apply_full_sync(const std::string&, const json& snapshot) override {
    if (!snapshot.is_object()) co_return;
    if (auto f = snapshot.find("f"); f != snapshot.end()) {
      // Marks learned by full sync (a healed partition) are passed on, so
      // nodes without a new link to the other side learn them too.
      auto raised = merge_marks(*f);
      if (!raised.empty()) send_marks(std::move(raised));
    }
    co_return;
  }
  task<std::optional<json>> full_sync_snapshot(const std::string&) override {
    if (hwm.empty()) co_return std::nullopt;
    json f = json::object();
    for (const auto& [s, mark] : hwm) f[std::to_string(s)] = mark;
    json snapshot = json::object();
    snapshot["f"] = std::move(f);
    co_return snapshot;
  }
  task<> remove_node(const std::string&, const std::string&) override { co_return; }
  task<> merge_custom(const std::string&, const json& payload) override {
    if (payload.is_object())
      if (auto f = payload.find("f"); f != payload.end()) merge_marks(*f);
    co_return;
  }

  static json announcement(const placement_options& o) {
    return detail::consumer_wire::member_announcement(o.weight, o.shards);
  }

  static task<> do_open(std::shared_ptr<impl> self) {
    auto changes = self->reg->watch(service_of(self->group));
    if (self->options.member)
      co_await self->reg->register_service(service_of(self->group), member_endpoint, announcement(self->options));
    // The members this node does not know yet (it just joined) re-announce.
    co_await self->reg->ask(service_of(self->group));
    self->recompute();
    self->tasks.spawn("placement members", watch_members(self, std::move(changes)));
  }

  static task<std::shared_ptr<placement>> open_on_strand(node& n, std::string group, placement_options options) {
    if (auto existing = n.find_attachment<placement>(group)) co_return existing;
    auto i = std::make_shared<impl>(n, group, options);
    i->reg = registry::open(n);
    i->rep = replica::start(n.replicas(), "barrel_p2p.placement." + group, *i);
    auto p = std::make_shared<placement>(i);
    n.set_attachment(p, group);
    std::exception_ptr failed;
    try {
      co_await do_open(i);
    } catch (...) {
      failed = std::current_exception();
    }
    if (failed) {  // nothing half-open stays: a later open() starts afresh
      n.clear_attachment<placement>(group);
      co_await do_close(i, true);
      std::rethrow_exception(failed);
    }
    co_return p;
  }

  static task<> forget(std::shared_ptr<impl> self) {
    self->n.clear_attachment<placement>(self->group);
    co_return;
  }

  static task<> do_close(std::shared_ptr<impl> self, bool deregister) {
    if (self->closed) co_return;
    self->closed = true;
    self->release_all();
    self->events.close();
    co_await self->tasks.stop();
    if (deregister && self->options.member) co_await self->reg->deregister(service_of(self->group), member_endpoint);
    if (self->rep) co_await self->rep->stop();
  }
};

task<std::shared_ptr<placement>> placement::open(node& n, std::string group, placement_options options) {
  if (!valid_group(group)) throw std::invalid_argument("placement group must be 1-100 bytes without a newline");
  if (options.shards == 0 || options.shards > 65'536)
    throw std::invalid_argument("placement shards must be 1 to 65536");
  if (!(options.weight > 0) || options.weight > 1e6)
    throw std::invalid_argument("placement weight must be greater than 0 and at most 1000000");
  co_return co_await boost::asio::co_spawn(n.get_executor(), impl::open_on_strand(n, std::move(group), options),
                                           boost::asio::use_awaitable);
}

placement::placement(std::shared_ptr<impl> i) : impl_(std::move(i)) {}

placement::~placement() { on_node_destroyed(); }

void placement::on_node_destroyed() noexcept {
  impl_->closed = true;
  impl_->tasks.cancel();
  impl_->events.close();
  impl_->rep.reset();
}

task<> placement::on_node_stop() {
  // The node is leaving: its peers see it go, nothing to deregister.
  co_await impl::do_close(impl_, false);
}

task<> placement::close() {
  auto self = shared_from_this();
  co_await boost::asio::co_spawn(impl_->strand, impl::do_close(impl_, true), boost::asio::use_awaitable);
  co_await boost::asio::co_spawn(impl_->strand, impl::forget(impl_), boost::asio::use_awaitable);
}

const std::string& placement::group() const { return impl_->group; }
std::uint32_t placement::shards() const { return impl_->options.shards; }
std::uint32_t placement::shard_of(std::string_view key) const {
  return barrel_p2p::shard_of(key, impl_->options.shards);
}

std::optional<std::string> placement::owner(std::uint32_t shard) const {
  if (shard >= impl_->owners.size()) return std::nullopt;
  return impl_->owners[shard];
}

std::vector<std::uint32_t> placement::owned_shards() const {
  std::vector<std::uint32_t> out;
  for (const auto& [s, fence] : impl_->mine) out.push_back(s);
  return out;
}

std::optional<std::uint64_t> placement::fence(std::uint32_t shard) const {
  auto it = impl_->mine.find(shard);
  if (it == impl_->mine.end()) return std::nullopt;
  return it->second;
}

std::uint64_t placement::high_water_mark(std::uint32_t shard) const {
  auto it = impl_->hwm.find(shard);
  return it == impl_->hwm.end() ? 0 : it->second;
}

std::vector<placement_member> placement::members() const {
  std::vector<placement_member> out;
  for (const auto& [node, weight] : impl_->members) out.push_back({node, weight});
  return out;
}

event_stream<shard_event> placement::subscribe(std::size_t capacity) { return impl_->events.subscribe(capacity); }

placement_counters placement::counters() const { return impl_->counters; }

}  // namespace barrel_p2p
