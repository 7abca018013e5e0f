#include "barrel_p2p/leader.hpp"
#include "barrel_p2p/log.hpp"

#include "barrel_p2p/replica_messages.hpp"

#include "barrel_p2p/crdt_wire.hpp"
#include "fencing.hpp"
#include "log_limiter.hpp"
#include "printable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <map>
#include <stdexcept>

namespace barrel_p2p {

namespace {

constexpr const char* instance_name = "barrel_p2p.leader";

std::string candidacy_key(const std::string& name, const std::string& node) { return name + '\n' + node; }

// Splits "name\nnode"; nullopt for anything else.
std::optional<std::pair<std::string, std::string>> split_key(const std::string& key) {
  const auto at = key.find('\n');
  if (at == std::string::npos || at == 0 || at + 1 == key.size()) return std::nullopt;
  return std::pair{key.substr(0, at), key.substr(at + 1)};
}

bool valid_name(const std::string& name) {
  return !name.empty() && name.size() <= 200 && name.find('\n') == std::string::npos;
}

struct local_campaign {
  bool leader = false;
  std::uint64_t fence = 0;
  bool announcing = false;  // false during lead(): the first role is returned, not streamed
  std::unique_ptr<event_publisher<leadership_event>> events;

  // This node no longer leads the election: its term is over, and a reader
  // of the stream learns it.
  void step_down() {
    if (!leader) return;
    leader = false;
    fence = 0;
    if (announcing && events) events->publish({leadership_event::kind::revoked, 0});
  }
};

}  // namespace

struct elections::impl final : replica_callbacks, std::enable_shared_from_this<elections::impl> {
  node& n;
  executor strand;
  ormap candidates;                          // key "name\nnode" -> {"p": priority}
  std::map<std::string, std::uint64_t> hwm;  // name -> greatest token seen
  std::map<std::string, local_campaign> mine;
  std::shared_ptr<replica> rep;
  bool stopped = false;

  explicit impl(node& nd) : n(nd), strand(nd.get_executor()) {}

  const std::string& self() const { return n.id(); }

  static crdt_wire::leaf_validator leaf() {
    return [](const std::string& key, const json& v) {
      return split_key(key).has_value() && v.is_object() && v.size() == 1 && v.contains("p") &&
             v["p"].is_number_integer();
    };
  }

  // The leader of `name`: highest priority, then lowest node id.
  std::optional<std::string> leader_of(const std::string& name) const {
    std::optional<std::pair<std::int64_t, std::string>> best;
    const auto prefix = name + '\n';
    for (const auto& [key, e] : candidates.entries()) {
      const auto* v = std::get_if<value_entry>(&e);
      if (!v || key.compare(0, prefix.size(), prefix) != 0) continue;
      const auto priority = v->payload["p"].get<std::int64_t>();
      auto node = key.substr(prefix.size());
      if (!best || priority > best->first || (priority == best->first && node < best->second))
        best = std::pair{priority, std::move(node)};
    }
    if (!best) return std::nullopt;
    return best->second;
  }

  void merge_fence(const std::string& name, std::uint64_t fence) {
    auto& mark = hwm[name];
    mark = std::max(mark, fence);
  }

  // A new term: past every token seen for the name, from the HLC.
  std::uint64_t take_term(const std::string& name) {
    auto& mark = hwm[name];
    mark = detail::next_fence(n.clock(), mark, detail::fence_bits(n.id()));
    return mark;
  }

  // Re-evaluates every election this node takes part in.
  void recompute() {
    for (auto& [name, c] : mine) {
      const bool leads = leader_of(name) == self();
      if (leads && !c.leader) {
        c.leader = true;
        c.fence = take_term(name);
        publish_fence(name, c.fence);
        if (c.announcing) c.events->publish({leadership_event::kind::elected, c.fence});
      } else if (!leads) {
        c.step_down();
      }
    }
  }

  void publish_fence(const std::string& name, std::uint64_t fence) {
    json f = json::object();
    f[name] = fence;
    boost::asio::co_spawn(strand, send_custom(shared_from_this(), {{"f", std::move(f)}}), boost::asio::detached);
  }

  static task<> send_custom(std::shared_ptr<impl> self, json payload) {
    if (self->stopped) co_return;
    co_await self->rep->broadcast_custom(std::move(payload));
  }

  // ---- replica_callbacks ----------------------------------------------------
  task<> merge_delta(const std::string&, const json& delta) override {
    crdt_wire::ingest(candidates, delta, n.clock(), leaf());
    recompute();
    co_return;
  }
  task<> apply_full_sync(const std::string&, const json& snapshot) override {
    if (snapshot.is_object()) {
      if (auto c = snapshot.find("c"); c != snapshot.end()) crdt_wire::ingest(candidates, *c, n.clock(), leaf());
      if (auto f = snapshot.find("f"); f != snapshot.end()) {
        // Marks learned by full sync (a healed partition) are gossiped on, so
        // that nodes without a new link to the other side learn them too and
        // every later term's token exceeds every token of either side.
        for (const auto& name : merge_fences(*f)) publish_fence(name, hwm[name]);
      }
    }
    recompute();
    co_return;
  }
  task<std::optional<json>> full_sync_snapshot(const std::string&) override {
    if (candidates.entry_count() == 0 && hwm.empty()) co_return std::nullopt;
    json f = json::object();
    for (const auto& [name, mark] : hwm) f[name] = mark;
    co_return json{{"c", crdt_wire::encode_map(candidates)}, {"f", std::move(f)}};
  }
  task<> remove_node(const std::string&, const std::string& node_id) override {
    // Only a node's own candidacies carry its id as the author.
    candidates.remove_values_by(node_id);
    recompute();
    co_return;
  }
  task<> merge_custom(const std::string&, const json& payload) override {
    if (payload.is_object())
      if (auto f = payload.find("f"); f != payload.end()) merge_fences(*f);
    co_return;
  }
  // No anti-entropy: candidacies follow liveness (peer_up / peer_down), as
  // in the specification.

  // Merges marks by max; returns the names whose mark went up. A mark is a
  // packed HLC timestamp, so one that no honest clock could have issued
  // (beyond this node's maximum forward offset, or not a valid timestamp)
  // is refused: accepted, it would push every later token towards
  // UINT64_MAX, where the next term would have no greater token left.
  std::vector<std::string> merge_fences(const json& f) {
    std::vector<std::string> raised;
    if (!f.is_object()) return raised;
    for (const auto& [name, mark] : f.items()) {
      if (!valid_name(name) || !mark.is_number_unsigned()) continue;
      const auto value = mark.get<std::uint64_t>();
      if (!n.clock().admissible(hlc_timestamp::unpack(value))) {
        refuse_mark(name, value);
        continue;
      }
      const auto before = hwm[name];
      merge_fence(name, value);
      if (hwm[name] > before) raised.push_back(name);
    }
    return raised;
  }

  detail::log_limiter mark_log;
  void refuse_mark(const std::string& name, std::uint64_t mark) {
    if (!mark_log.allow(n.sched().now(), std::chrono::minutes(1)) || !n.config().log) return;
    const logger log(n.config().log, n.id(), "elections");
    std::string more;
    if (const auto held_back = mark_log.take_held_back(); held_back > 0)
      more = " (and " + std::to_string(held_back) + " more since the last line)";
    log("refused the fencing mark " + std::to_string(mark) + " for '" + detail::printable(name) + "': its timestamp " +
        hlc_timestamp::unpack(mark).to_string() + " is beyond this node's maximum clock offset" + more);
  }

  // ---- operations (on the strand) ---------------------------------------------
  struct lead_start {
    bool leader = false;
    std::uint64_t fence = 0;
    event_stream<leadership_event> events;
  };

  static task<lead_start> do_lead(std::shared_ptr<impl> self, std::string name, std::int64_t priority) {
    if (self->stopped) throw std::logic_error("elections: the node is stopping");
    if (self->mine.contains(name)) throw std::invalid_argument("already campaigning for '" + name + "'");
    // A candidacy stamped by a clock far ahead would be dropped by the peers
    // (and its fencing token would outrun theirs): refuse it like a put.
    self->n.clocks().check_writable();
    auto& c = self->mine[name];
    c.events = std::make_unique<event_publisher<leadership_event>>(self->strand);
    lead_start start;
    start.events = c.events->subscribe();
    co_await write_local(self, candidacy_key(name, self->self()), candidacy_value(priority));
    auto& after = self->mine.at(name);
    after.announcing = true;
    start.leader = after.leader;
    start.fence = after.fence;
    co_return start;
  }

  static task<> do_resign(std::shared_ptr<impl> self, std::string name) {
    auto it = self->mine.find(name);
    if (it == self->mine.end() || self->stopped) co_return;
    self->mine.erase(it);  // closes its stream
    co_await write_local(self, candidacy_key(name, self->self()), std::nullopt);
  }

  // Built outside the coroutine: GCC 12 cannot keep a json literal's
  // initializer list in a coroutine frame (docs/how-to/contributing.md).
  static json candidacy_value(std::int64_t priority) { return json{{"p", priority}}; }

  // The forward path of our own candidacy (or its withdrawal): merged here,
  // stamped by the node's clock, then handed down encoded once. Peer
  // candidacies come up through merge_delta.
  static task<> write_local(std::shared_ptr<impl> self, std::string key, std::optional<json> value) {
    const auto ts = self->n.clock().now();
    entry e = value ? entry(value_entry{std::move(*value), {self->n.id(), ts}}) : entry(tombstone{ts});
    auto payload = encode_delta_payload(key, e);
    self->candidates.merge_entry(key, std::move(e));
    self->recompute();
    co_await self->rep->publish_delta(std::move(payload));
  }
};

std::shared_ptr<elections> elections::open(node& n) {
  if (auto existing = n.find_attachment<elections>()) return existing;
  auto i = std::make_shared<impl>(n);
  i->rep = replica::start(n.replicas(), instance_name, *i);
  auto e = std::make_shared<elections>(i);
  n.set_attachment(e);
  return e;
}

elections::elections(std::shared_ptr<impl> i) : impl_(std::move(i)) {}

elections::~elections() { on_node_destroyed(); }

void elections::on_node_destroyed() noexcept {
  impl_->stopped = true;
  impl_->rep.reset();
  // A campaign's stream ends with its node: a reader waiting on next()
  // would otherwise wait for ever (and keep what it holds alive).
  for (auto& [name, c] : impl_->mine)
    if (c.events) c.events->close();
}

task<std::unique_ptr<campaign>> elections::lead(std::string name, campaign_options options) {
  if (!valid_name(name)) throw std::invalid_argument("election name must be 1-200 bytes without a newline");
  auto self = shared_from_this();
  auto start = co_await boost::asio::co_spawn(impl_->strand, impl::do_lead(impl_, name, options.priority),
                                              boost::asio::use_awaitable);
  co_return std::unique_ptr<campaign>(new campaign(
      self, impl_->strand, name, start.leader ? election_role::leader : election_role::follower,
      start.leader ? std::optional<std::uint64_t>(start.fence) : std::nullopt, std::move(start.events)));
}

task<> elections::resign(std::string name) {
  co_await boost::asio::co_spawn(impl_->strand, impl::do_resign(impl_, std::move(name)), boost::asio::use_awaitable);
}

std::optional<std::string> elections::leader(const std::string& name) const { return impl_->leader_of(name); }

bool elections::is_leader(const std::string& name) const {
  auto it = impl_->mine.find(name);
  return it != impl_->mine.end() && it->second.leader;
}

std::optional<std::uint64_t> elections::fence(const std::string& name) const {
  auto it = impl_->mine.find(name);
  if (it == impl_->mine.end() || !it->second.leader) return std::nullopt;
  return it->second.fence;
}

std::uint64_t elections::high_water_mark(const std::string& name) const {
  auto it = impl_->hwm.find(name);
  return it == impl_->hwm.end() ? 0 : it->second;
}

task<> elections::on_node_stop() {
  impl_->stopped = true;
  if (impl_->rep) co_await impl_->rep->stop();
  // A stopped node leads nothing: a leader's reader learns it (revoked),
  // then every reader sees its stream end instead of waiting for ever.
  for (auto& [name, c] : impl_->mine) {
    c.step_down();
    if (c.events) c.events->close();
  }
}

campaign::campaign(std::shared_ptr<elections> owner, executor strand, std::string name, election_role initial,
                   std::optional<std::uint64_t> fence, event_stream<leadership_event> events)
    : owner_(std::move(owner)), strand_(std::move(strand)), name_(std::move(name)), initial_(initial),
      initial_fence_(fence), events_(std::move(events)) {}

namespace {
// Holds the service alive until the resignation is done, even if the
// campaign held the last reference to it.
task<> resign_holding(std::shared_ptr<elections> owner, std::string name) { co_await owner->resign(std::move(name)); }
}  // namespace

campaign::~campaign() {
  if (resigned_) return;
  // Withdraw in the background: the candidacy is tombstoned and gossiped.
  boost::asio::co_spawn(strand_, resign_holding(owner_, name_), boost::asio::detached);
}

task<> campaign::resign() {
  if (resigned_) co_return;
  resigned_ = true;
  co_await owner_->resign(name_);
}

}  // namespace barrel_p2p
