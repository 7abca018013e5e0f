#include "barrel_p2p/registry.hpp"

#include "barrel_p2p/crdt_wire.hpp"
#include "barrel_p2p/log.hpp"
#include "barrel_p2p/replica_messages.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "consumer_wire.hpp"
#include "log_limiter.hpp"
#include "printable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

namespace barrel_p2p {

namespace {

constexpr const char* instance_name = "barrel_p2p.registry";

// How long a down notice is remembered (entries of that node older than it
// are refused), how many at most, and how often this node repeats the ones
// it remembers when it meets a new neighbour (a healed partition).
constexpr duration down_memory{3'600'000};
constexpr std::size_t max_downs = 10'000;
constexpr duration roll_call_interval{5'000};
constexpr duration tombstone_ttl{3'600'000};
constexpr duration tombstone_sweep{60'000};
// A provider answers queries about one service at most this often; an asker
// asks about one service at most this often.
constexpr duration answer_interval{500};
constexpr duration ask_interval{1'000};

using namespace detail::consumer_wire;

std::string provider_key(const std::string& service, const std::string& node, const std::string& endpoint) {
  return join_registry_key(service, node, endpoint);
}
static_assert(registry::max_service_bytes == max_service_bytes && registry::max_endpoint_bytes == max_endpoint_bytes &&
              registry::max_metadata_bytes == max_metadata_bytes);

std::optional<registry_key> split_key(const std::string& key) { return split_registry_key(key); }
bool valid_value(const json& v) { return valid_registration(v); }

// Peers' down reasons that may mean the node is gone, not merely out of
// this node's active view (evicted, disconnect, replaced). Only "left" is
// certain; a closed connection is also what a live peer does to a link it
// does not count as active (HyParView views are not always symmetric), and
// a heartbeat timeout can be one slow link: those are probed first.
bool may_be_gone(const std::string& reason) {
  return reason == "closed_by_peer" || reason == "heartbeat_timeout" || reason == "io_error";
}

// How long a probe waits before dialling a peer whose connection failed
// (a peer that only reconnects is back in the view by then).
constexpr duration probe_delay{250};

}  // namespace

struct registry::impl final : replica_callbacks, std::enable_shared_from_this<registry::impl> {
  node& n;
  executor strand;
  ormap table;  // "service\nnode\nendpoint" -> {"m": metadata, "s": since ms}
  struct down {
    hlc_timestamp at;
    duration noted;  // scheduler time, for expiry
  };
  std::map<std::string, down> downs;  // node -> the latest down notice about it
  std::map<std::string, event_publisher<service_event>> watchers;  // "" = every service
  std::map<std::string, duration> last_answer, last_ask, last_renotice;
  std::set<std::string> probing;
  duration last_roll_call{-roll_call_interval};
  std::shared_ptr<replica> rep;
  task_group tasks;
  registry_counters counters;
  detail::log_limiter log_limit;
  logger logger_{n.config().log, n.id(), "registry"};
  bool stopped = false;

  explicit impl(node& nd) : n(nd), strand(nd.get_executor()), tasks(strand) {}

  const std::string& self() const { return n.id(); }

  // At most one line every 10 s: peers choose what this layer logs about.
  void log(const std::string& what) {
    if (logger_ && log_limit.allow(n.sched().now(), std::chrono::seconds(10))) logger_(what);
  }

  static std::optional<service_provider> provider_of(const std::string& key, const entry& e) {
    const auto* v = std::get_if<value_entry>(&e);
    if (!v) return std::nullopt;
    auto p = split_key(key);
    if (!p) return std::nullopt;
    return service_provider{std::move(p->service), std::move(p->node), std::move(p->endpoint), v->payload.at("m"),
                            v->payload.at("s").get<std::uint64_t>()};
  }

  void publish(service_event::kind what, const service_provider& p) {
    static const std::string every;
    for (const auto* name : {&p.service, &every}) {
      auto it = watchers.find(*name);
      if (it == watchers.end()) continue;
      if (!it->second.has_subscribers()) {
        watchers.erase(it);
        continue;
      }
      it->second.publish(service_event{what, p});
    }
  }

  // Merges one entry and publishes what it changed.
  bool merge_one(const std::string& key, entry e) {
    const auto* current = table.get_entry(key);
    auto before = current ? provider_of(key, *current) : std::nullopt;
    if (!table.merge_entry(key, std::move(e))) return false;
    auto after = provider_of(key, *table.get_entry(key));
    if (after) {
      if (!before || *before != *after) publish(service_event::kind::registered, *after);
    } else if (before) {
      publish(service_event::kind::deregistered, *before);
    }
    return true;
  }

  bool stale(const std::string& node, const hlc_timestamp& at) const {
    auto it = downs.find(node);
    return it != downs.end() && at <= it->second.at;
  }

  // Peer entries: well formed, written by the node the key names (a member
  // cannot register or overwrite another node's services), and not older
  // than a down notice about that node.
  void ingest(const json& incoming) {
    const auto leaf = [](const std::string& key, const json& v) { return split_key(key) && valid_value(v); };
    crdt_wire::rejections why;
    auto accepted = crdt_wire::accept(incoming, n.clock(), leaf, why);
    counters.rejected += why.total;
    std::vector<std::string> stale_nodes;
    for (const auto& [key, e] : accepted.entries()) {
      const auto parts = split_key(key);
      if (!parts) {  // a tombstone: the leaf check sees values only
        ++counters.rejected;
        continue;
      }
      if (const auto* v = std::get_if<value_entry>(&e)) {
        if (v->dot.node != parts->node) {
          ++counters.rejected;
          continue;
        }
        if (stale(parts->node, v->dot.hlc)) {
          ++counters.stale_dropped;
          if (parts->node != self()) stale_nodes.push_back(parts->node);
          continue;
        }
      }
      try {
        n.clock().update(entry_hlc(e));
      } catch (const hlc_offset_error&) {
        continue;  // only if the wall clock stepped back since accept
      }
      if (parts->node == self()) {
        // Our own keys: this node is their only writer, so what it holds is
        // the truth. A registration we never made is our predecessor's under
        // the same id: retract it. A tombstone of a live one is another
        // member's doing: re-announce it.
        const auto* mine = table.get_entry(key);
        if (std::holds_alternative<value_entry>(e) && !mine) retract(key);
        else if (mine && std::holds_alternative<value_entry>(*mine) && entry_wins(e, *mine)) reassert(key, entry_hlc(e));
        continue;
      }
      merge_one(key, e);
    }
    // A live node's old entries: its neighbour missed (or never got) the
    // down notice about it. Repeating the notice reaches that node, which
    // re-announces with fresh stamps.
    std::sort(stale_nodes.begin(), stale_nodes.end());
    stale_nodes.erase(std::unique(stale_nodes.begin(), stale_nodes.end()), stale_nodes.end());
    const auto now = n.sched().now();
    for (const auto& node : stale_nodes) {
      auto& last = last_renotice[node];
      if (last != duration{} && now - last < ask_interval) continue;
      last = now;
      send_notices({node});
    }
  }

  // Re-stamps our registration `key` past `floor` and gossips it.
  void reassert(const std::string& key, const hlc_timestamp& floor) {
    auto v = std::get<value_entry>(*table.get_entry(key));
    n.clock().update(floor);
    v.dot = {self(), n.clock().now()};
    entry e(std::move(v));
    auto payload = encode_delta_payload(key, e);
    table.merge_entry(key, std::move(e));
    ++counters.reasserted;
    publish_delta(std::move(payload));
  }

  void retract(const std::string& key) {
    entry e = tombstone{n.clock().now()};
    auto payload = encode_delta_payload(key, e);
    table.merge_entry(key, std::move(e));
    ++counters.retracted;
    publish_delta(std::move(payload));
  }

  // Deregistrations are remembered (tombstones) for tombstone_ttl, so that
  // reconciliation cannot bring a removed registration back.
  static task<> sweep_loop(std::shared_ptr<impl> self) {
    while (!self->stopped) {
      const bool slept = co_await self->n.sched().sleep(tombstone_sweep);
      if (!slept) break;
      const auto wall = self->n.clock().wall_ms();
      const auto ttl = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(tombstone_ttl).count());
      if (wall > ttl) self->table.gc_tombstones(wall - ttl);
      self->expire_downs();
    }
  }

  // ---- down notices ---------------------------------------------------------
  // Drops `node`'s registrations written at or before `at`.
  void apply_down(const std::string& node, const hlc_timestamp& at) {
    auto& d = downs[node];
    if (at > d.at) {  // a repeat of a notice does not extend its memory
      d.at = at;
      d.noted = n.sched().now();
    }
    std::vector<std::pair<std::string, dot>> gone;
    for (const auto& [key, e] : table.entries()) {
      const auto* v = std::get_if<value_entry>(&e);
      if (v && v->dot.node == node && v->dot.hlc <= at) gone.emplace_back(key, v->dot);
    }
    for (const auto& [key, d_] : gone) {
      auto before = provider_of(key, *table.get_entry(key));
      if (table.remove_value_if(key, d_)) {
        ++counters.providers_dropped;
        if (before) publish(service_event::kind::deregistered, *before);
      }
    }
    expire_downs();
  }

  void expire_downs() {
    const auto now = n.sched().now();
    std::erase_if(downs, [&](const auto& kv) { return now - kv.second.noted > down_memory; });
    if (last_renotice.size() > max_downs) last_renotice.clear();
    while (downs.size() > max_downs) {
      auto oldest = std::min_element(downs.begin(), downs.end(),
                                     [](const auto& a, const auto& b) { return a.second.noted < b.second.noted; });
      downs.erase(oldest);
    }
  }

  void on_membership(const membership_event& ev) {
    if (stopped || ev.what != membership_event::kind::peer_down) return;
    if (ev.reason == "left") {
      declare_down(ev.peer.id);
    } else if (may_be_gone(ev.reason) && probing.insert(ev.peer.id).second) {
      ++counters.probes;
      tasks.spawn("registry probe", probe(shared_from_this(), ev.peer));
    }
  }

  // The notice covers every entry of `node` this node holds, even one
  // stamped by a clock ahead of ours.
  void declare_down(const std::string& node) {
    auto at = n.clock().now();
    for (const auto& [key, e] : table.entries())
      if (const auto* v = std::get_if<value_entry>(&e); v && v->dot.node == node) at = std::max(at, v->dot.hlc);
    apply_down(node, at);
    send_notices({node});
  }

  // A neighbour's connection failed: dial it. A dead process refuses (or
  // does not answer within the handshake timeout); a live one answers under
  // its id, and keeps its registrations.
  // Runs in `tasks`: node::stop() waits for it (or cancels it) before the
  // layers below go.
  static task<> probe(std::shared_ptr<impl> self, peer_descriptor peer) {
    struct forget {
      impl& i;
      std::string id;
      ~forget() { i.probing.erase(id); }
    } done{*self, peer.id};
    const bool slept = co_await self->n.sched().sleep(probe_delay);
    if (!slept || self->stopped || self->n.membership().is_active(peer.id)) co_return;
    // Close afterwards only a connection this probe opened.
    const bool had_connection = self->n.net().is_connected(peer.id);
    const auto answer = co_await self->n.net().connect(peer.address);
    if (self->stopped) co_return;
    if (answer && !had_connection && !self->n.membership().is_active(answer->id)) self->n.net().disconnect(answer->id);
    if (answer && answer->id == peer.id) co_return;  // alive
    self->declare_down(peer.id);
  }

  // Gossips the down notices this node holds about `nodes`.
  void send_notices(const std::vector<std::string>& nodes) {
    json d = json::array();
    for (const auto& node : nodes)
      if (auto it = downs.find(node); it != downs.end()) d.push_back(json::array({node, it->second.at.pack()}));
    if (d.empty() || stopped) return;
    counters.down_notices_sent += d.size();
    json payload = json::object();
    payload["d"] = std::move(d);
    tasks.spawn("registry notice", send_custom(shared_from_this(), std::move(payload)));
  }

  static task<> send_custom(std::shared_ptr<impl> self, json payload) {
    if (self->stopped) co_return;
    co_await self->rep->broadcast_custom(std::move(payload));
  }

  void on_notices(const json& d) {
    for (const auto& [node, packed] : parse_down_notices(d)) {
      const auto at = hlc_timestamp::unpack(packed);
      if (!at.valid() || !n.clock().admissible(at)) continue;
      ++counters.down_notices_received;
      n.clock().update(at);
      if (node == self()) {
        refute(at);
      } else {
        apply_down(node, at);
      }
    }
  }

  // A down notice about this node: it is alive. Re-stamp the registrations
  // the notice would drop (our clock is past it now) and gossip them.
  void refute(const hlc_timestamp& at) {
    std::vector<std::string> mine;
    for (const auto& [key, e] : table.entries()) {
      const auto p = split_key(key);
      const auto* v = std::get_if<value_entry>(&e);
      if (p && p->node == self() && v && v->dot.hlc <= at) mine.push_back(key);
    }
    if (mine.empty()) return;
    ++counters.refutations;
    log("a down notice named this node: re-announcing its " + std::to_string(mine.size()) + " registrations");
    json delta = json::object();
    for (const auto& key : mine) {
      auto v = std::get<value_entry>(*table.get_entry(key));
      v.dot = {self(), n.clock().now()};
      entry e(std::move(v));
      delta[key] = crdt_wire::encode_entry(e);
      table.merge_entry(key, std::move(e));
    }
    publish_delta(encode_delta_payload(delta));
  }

  // A sync brought entries (a new neighbour, maybe the two sides of a
  // partition meeting again). Repeat what we remember of down notices, at
  // most once per roll_call_interval: nodes on the other side that were
  // counted down and are alive re-announce.
  void roll_call() {
    const auto now = n.sched().now();
    if (downs.empty() || now - last_roll_call < roll_call_interval) return;
    last_roll_call = now;
    expire_downs();
    std::vector<std::string> nodes;
    for (const auto& [node, d] : downs) nodes.push_back(node);
    send_notices(nodes);
  }

  // ---- queries ----------------------------------------------------------------
  void on_query(const json& q) {
    const auto parsed = parse_query(q);
    if (!parsed) return;
    const auto& service = *parsed;
    const auto now = n.sched().now();
    auto last = last_answer.find(service);
    if (last != last_answer.end() && now - last->second < answer_interval) return;
    json delta = json::object();
    const auto prefix = service + '\n' + self() + '\n';
    for (const auto& [key, e] : table.entries())
      if (key.compare(0, prefix.size(), prefix) == 0 && std::holds_alternative<value_entry>(e))
        delta[key] = crdt_wire::encode_entry(e);
    if (delta.empty()) return;
    if (last_answer.size() > 4096) last_answer.clear();
    last_answer[service] = now;
    ++counters.queries_answered;
    publish_delta(encode_delta_payload(delta));
  }

  void publish_delta(shared_bytes payload) {
    if (stopped) return;
    tasks.spawn("registry announce", send_delta(shared_from_this(), std::move(payload)));
  }
  static task<> send_delta(std::shared_ptr<impl> self, shared_bytes payload) {
    if (self->stopped) co_return;
    co_await self->rep->publish_delta(std::move(payload));
  }

  // ---- replica_callbacks ----------------------------------------------------
  task<> merge_delta(const std::string&, const json& delta) override {
    ingest(delta);
    co_return;
  }
  task<> apply_full_sync(const std::string&, const json& snapshot) override {
    ingest(snapshot);
    roll_call();
    co_return;
  }
  task<std::optional<json>> full_sync_snapshot(const std::string&) override {
    if (table.entry_count() == 0) co_return std::nullopt;
    co_return crdt_wire::encode_map(table);
  }
  // Reconciled by ranges, on connect and every anti-entropy round: a
  // registration gossiped while the overlay re-formed reaches the nodes the
  // broadcast missed. Entries of a node counted down are refused for
  // down_memory (and their holders told again), so a round cannot bring
  // them back.
  const sync_index* sync_items(const std::string&) override { return table.sync_items(); }
  task<std::optional<std::vector<std::uint8_t>>> snapshot_cbor_of(const std::string&,
                                                                  const std::vector<sync_item>& items) override {
    co_return crdt_wire::write_items(table, items);
  }
  bool anti_entropy() const override { return true; }
  // Liveness comes from the membership listener, which knows why a peer
  // left the view (evicted peers are alive).
  task<> remove_node(const std::string&, const std::string&) override { co_return; }
  task<> merge_custom(const std::string&, const json& payload) override {
    if (!payload.is_object()) co_return;
    if (auto d = payload.find("d"); d != payload.end()) on_notices(*d);
    if (auto q = payload.find("q"); q != payload.end()) on_query(*q);
    co_return;
  }

  // ---- operations (on the strand) -------------------------------------------
  static json registration_value(json metadata, std::uint64_t since) {
    json v = json::object();
    v["m"] = std::move(metadata);
    v["s"] = since;
    return v;
  }

  static task<> do_register(std::shared_ptr<impl> self, std::string key, json metadata) {
    if (self->stopped) throw std::logic_error("registry: the node is stopping");
    self->n.clocks().check_writable();
    std::uint64_t since = self->n.clock().wall_ms();
    if (const auto* current = self->table.get_entry(key))
      if (const auto* v = std::get_if<value_entry>(current)) since = v->payload["s"].get<std::uint64_t>();
    ++self->counters.registrations;
    co_await write_local(self, key, registration_value(std::move(metadata), since));
  }

  static task<std::size_t> do_deregister(std::shared_ptr<impl> self, std::string service,
                                         std::optional<std::string> endpoint) {
    if (self->stopped) co_return 0;
    std::vector<std::string> keys;
    if (endpoint) {
      keys.push_back(provider_key(service, self->self(), *endpoint));
    } else {
      const auto prefix = service + '\n' + self->self() + '\n';
      for (const auto& [key, e] : self->table.entries())
        if (key.compare(0, prefix.size(), prefix) == 0) keys.push_back(key);
    }
    std::size_t removed = 0;
    for (const auto& key : keys) {
      if (self->stopped) break;
      const auto* e = self->table.get_entry(key);
      if (!e || !std::holds_alternative<value_entry>(*e)) continue;
      ++removed;
      ++self->counters.deregistrations;
      co_await write_local(self, key, std::nullopt);
    }
    co_return removed;
  }

  // Merged here, stamped by the node's clock, handed down encoded once.
  static task<> write_local(std::shared_ptr<impl> self, std::string key, std::optional<json> value) {
    const auto ts = self->n.clock().now();
    entry e = value ? entry(value_entry{std::move(*value), {self->n.id(), ts}}) : entry(tombstone{ts});
    auto payload = encode_delta_payload(key, e);
    self->merge_one(key, std::move(e));
    co_await self->rep->publish_delta(std::move(payload));
  }

  // Gossips a query for `service` unless one left less than ask_interval
  // ago; false when stopped.
  static task<bool> do_ask(std::shared_ptr<impl> self, std::string service) {
    if (self->stopped) co_return false;
    const auto now = self->n.sched().now();
    auto last = self->last_ask.find(service);
    if (last != self->last_ask.end() && now - last->second < ask_interval) co_return true;
    if (self->last_ask.size() > 4096) self->last_ask.clear();
    self->last_ask[service] = now;
    ++self->counters.queries_sent;
    json q = json::object();
    q["q"] = service;
    co_await self->rep->broadcast_custom(std::move(q));
    co_return true;
  }

  std::vector<service_provider> lookup(const std::string& service) const {
    std::vector<service_provider> out;
    const auto prefix = service + '\n';
    for (const auto& [key, e] : table.entries())
      if (key.compare(0, prefix.size(), prefix) == 0)
        if (auto p = provider_of(key, e)) out.push_back(std::move(*p));
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
      return std::tie(a.node, a.endpoint) < std::tie(b.node, b.endpoint);
    });
    return out;
  }
};

std::shared_ptr<registry> registry::open(node& n) {
  if (auto existing = n.find_attachment<registry>()) return existing;
  auto i = std::make_shared<impl>(n);
  i->table.track_sync_items();
  i->rep = replica::start(n.replicas(), instance_name, *i);
  i->tasks.spawn("registry sweep", impl::sweep_loop(i));
  std::weak_ptr<impl> weak = i;
  n.membership().add_listener([weak](const membership_event& ev) {
    if (auto self = weak.lock()) self->on_membership(ev);
  });
  auto r = std::make_shared<registry>(i);
  n.set_attachment(r);
  return r;
}

registry::registry(std::shared_ptr<impl> i) : impl_(std::move(i)) {}

registry::~registry() { on_node_destroyed(); }

void registry::on_node_destroyed() noexcept {
  impl_->stopped = true;
  impl_->tasks.cancel();
  impl_->watchers.clear();
  impl_->rep.reset();
}

task<> registry::on_node_stop() {
  impl_->stopped = true;
  impl_->watchers.clear();  // ends the streams
  co_await impl_->tasks.stop();
  if (impl_->rep) co_await impl_->rep->stop();
}

task<> registry::register_service(std::string service, std::string endpoint, json metadata) {
  if (!valid_part(service, max_service_bytes))
    throw std::invalid_argument("service name must be 1-200 bytes without a newline");
  if (!valid_part(endpoint, max_endpoint_bytes))
    throw std::invalid_argument("endpoint must be 1-512 bytes without a newline");
  if (!metadata.is_object()) throw std::invalid_argument("service metadata must be a JSON object");
  std::size_t metadata_bytes = 0;
  try {
    metadata_bytes = metadata.dump().size();
  } catch (const json::type_error&) {
    throw std::invalid_argument("service metadata holds a string that is not valid UTF-8");
  }
  if (metadata_bytes > max_metadata_bytes) throw std::invalid_argument("service metadata is over 4096 bytes of JSON");
  auto key = provider_key(service, impl_->self(), endpoint);
  co_await boost::asio::co_spawn(impl_->strand, impl::do_register(impl_, std::move(key), std::move(metadata)),
                                 boost::asio::use_awaitable);
}

task<bool> registry::deregister(std::string service, std::string endpoint) {
  const auto removed = co_await boost::asio::co_spawn(
      impl_->strand, impl::do_deregister(impl_, std::move(service), std::move(endpoint)), boost::asio::use_awaitable);
  co_return removed > 0;
}

task<std::size_t> registry::deregister(std::string service) {
  co_return co_await boost::asio::co_spawn(impl_->strand, impl::do_deregister(impl_, std::move(service), std::nullopt),
                                           boost::asio::use_awaitable);
}

std::vector<service_provider> registry::lookup(const std::string& service) const { return impl_->lookup(service); }

namespace {
task<std::vector<service_provider>> find_on_strand(std::shared_ptr<registry::impl> self, std::string service,
                                                   duration timeout) {
  if (!self->lookup(service).empty()) co_return self->lookup(service);
  const bool asked = co_await registry::impl::do_ask(self, service);
  if (!asked) co_return self->lookup(service);
  // The answers arrive as deltas; look every few milliseconds until one has.
  const auto deadline = self->n.sched().now() + std::min<duration>(timeout, std::chrono::hours(24));
  while (!self->stopped && self->lookup(service).empty() && self->n.sched().now() < deadline) {
    const bool slept = co_await self->n.sched().sleep(duration{10});
    if (!slept) break;
  }
  co_return self->lookup(service);
}
}  // namespace

task<std::vector<service_provider>> registry::find(std::string service, duration timeout) {
  if (!valid_part(service, max_service_bytes))
    throw std::invalid_argument("service name must be 1-200 bytes without a newline");
  co_return co_await boost::asio::co_spawn(impl_->strand, find_on_strand(impl_, std::move(service), timeout),
                                           boost::asio::use_awaitable);
}

task<> registry::ask(std::string service) {
  if (!valid_part(service, max_service_bytes))
    throw std::invalid_argument("service name must be 1-200 bytes without a newline");
  co_await boost::asio::co_spawn(impl_->strand, impl::do_ask(impl_, std::move(service)), boost::asio::use_awaitable);
}

std::vector<std::string> registry::services() const {
  std::vector<std::string> out;
  for (const auto& [key, e] : impl_->table.entries())
    if (std::holds_alternative<value_entry>(e))
      if (auto p = split_key(key)) out.push_back(std::move(p->service));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<service_provider> registry::providers() const {
  std::vector<service_provider> out;
  for (const auto& [key, e] : impl_->table.entries())
    if (auto p = impl::provider_of(key, e)) out.push_back(std::move(*p));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::tie(a.service, a.node, a.endpoint) < std::tie(b.service, b.node, b.endpoint);
  });
  return out;
}

event_stream<service_event> registry::watch(const std::string& service, std::size_t capacity) {
  if (!service.empty() && !valid_part(service, max_service_bytes))
    throw std::invalid_argument("service name must be 1-200 bytes without a newline");
  // Publishers no stream reads any more (a closed WebSocket) go first.
  for (auto it = impl_->watchers.begin(); it != impl_->watchers.end();)
    it = it->second.has_subscribers() ? std::next(it) : impl_->watchers.erase(it);
  auto it = impl_->watchers.try_emplace(service, impl_->strand).first;
  return it->second.subscribe(capacity);
}

registry_counters registry::counters() const { return impl_->counters; }

}  // namespace barrel_p2p
