#include "barrel_p2p/sim_network.hpp"

#include "barrel_p2p/cbor.hpp"
#include "read_hold_table.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <deque>
#include <map>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <unordered_map>
#include <variant>

namespace barrel_p2p {

namespace asio = boost::asio;

namespace {

struct link {
  std::uint64_t epoch = 0;  // tells this link from a later one to the same peer
  std::uint32_t peer = 0;   // the peer's index
};

// One node's links by peer id. A handful per node, looked up on every
// message: a sorted vector beats a tree, and keeps the tree's order, in
// which a crash or a partition fails them (so runs replay as before).
class link_table {
 public:
  using entry = std::pair<std::string, link>;
  using iterator = std::vector<entry>::iterator;
  using const_iterator = std::vector<entry>::const_iterator;

 private:
  template <class V>
  static auto lower(V& v, const std::string& id) {
    return std::lower_bound(v.begin(), v.end(), id, [](const entry& e, const std::string& k) { return e.first < k; });
  }

 public:
  iterator begin() { return v_.begin(); }
  iterator end() { return v_.end(); }
  const_iterator begin() const { return v_.begin(); }
  const_iterator end() const { return v_.end(); }
  iterator find(const std::string& id) {
    auto it = lower(v_, id);
    return it != v_.end() && it->first == id ? it : v_.end();
  }
  bool contains(const std::string& id) const {
    auto it = lower(v_, id);
    return it != v_.end() && it->first == id;
  }
  link& operator[](const std::string& id) {
    auto it = lower(v_, id);
    if (it == v_.end() || it->first != id) it = v_.insert(it, entry{id, {}});
    return it->second;
  }
  void erase(iterator it) { v_.erase(it); }
  void clear() { v_.clear(); }

 private:
  std::vector<entry> v_;
};

struct sim_node {
  peer_descriptor desc;
  bool alive = true;
  bool attached = true;  // false once its transport is stopped or destroyed
  transport::connected_handler on_connected;
  transport::disconnected_handler on_disconnected;
  transport::message_handler on_message[channel_count];
  transport_counters counters;
  link_table links;
  duration wall_skew{0};                        // this node's wall clock minus true time
  duration extra_delay{0};                      // a slow node: added to what it sends and receives
  std::uint32_t region = 0;
  // hold_reading: messages from a held peer wait here, in order, as they
  // would in TCP's buffers (unbounded: the sender's side is not modelled).
  struct parked_message {
    std::uint64_t epoch;
    channel ch;
    shared_bytes body;
  };
  std::unique_ptr<detail::read_hold_table> holds;
  std::map<std::string, std::deque<parked_message>> parked;
};

// A sleeping coroutine's completion, waiting for its instant on the
// timeline (or for cancellation, which completes it early with false).
struct sleeper {
  virtual ~sleeper() = default;
  virtual void complete(bool fired) = 0;
};

// A message on its way: indices, not ids, so that delivery looks nothing up.
struct delivery {
  std::uint32_t from, to;
  std::uint64_t epoch;
  channel ch;
  shared_bytes body;
};

// What happens at an instant. Messages and wake-ups, nearly all events,
// are stored as data; anything else is a function.
using happening = std::variant<delivery, std::shared_ptr<sleeper>, std::function<void()>>;

// The timeline holds small keys; what happens waits in a slot, so the heap
// moves 24 bytes, not a function.
struct event {
  duration at;
  std::uint64_t seq;
  std::uint32_t slot;
};
struct later {
  bool operator()(const event& a, const event& b) const {
    return a.at != b.at ? a.at > b.at : a.seq > b.seq;
  }
};

}  // namespace

struct sim_network::impl {
  asio::io_context& io;
  sim_config config;
  random_engine rng;
  duration now{0};
  std::uint64_t next_seq = 0;
  std::uint64_t next_epoch = 1;
  std::vector<event> timeline;  // a min-heap by (at, seq)
  std::vector<happening> slots;        // what each event does
  std::vector<std::uint32_t> free_slots;
  std::vector<std::unique_ptr<sim_node>> nodes;
  std::unordered_map<std::string, std::size_t> index_of;
  std::set<std::pair<std::string, std::string>> blocked;  // directed
  sim_stats stats;
  std::optional<sim_regions> regions;
  // Links that are down until an instant, by (lower, higher) node index.
  std::map<std::pair<std::uint32_t, std::uint32_t>, duration> down_until;
  double flaps_per_second = 0;
  duration flap_length{0};
  std::uint64_t flap_generation = 0;  // ends an earlier set_flapping's chain

  impl(asio::io_context& io_, sim_config c) : io(io_), config(c), rng(c.seed) {}

  void schedule(duration delay, happening what) {
    std::uint32_t slot;
    if (free_slots.empty()) {
      slot = static_cast<std::uint32_t>(slots.size());
      slots.push_back(std::move(what));
    } else {
      slot = free_slots.back();
      free_slots.pop_back();
      slots[slot] = std::move(what);
    }
    timeline.push_back({now + delay, next_seq++, slot});
    std::push_heap(timeline.begin(), timeline.end(), later{});
  }

  // Runs every ready coroutine, then the next event; false when none is due
  // before `limit`.
  bool step(duration limit) {
    io.restart();
    io.poll();
    if (timeline.empty() || timeline.front().at > limit) return false;
    std::pop_heap(timeline.begin(), timeline.end(), later{});
    const event ev = timeline.back();
    timeline.pop_back();
    now = ev.at;
    ++stats.events;
    happening what = std::move(slots[ev.slot]);
    slots[ev.slot] = std::function<void()>{};  // releases nothing twice
    free_slots.push_back(ev.slot);
    if (auto* d = std::get_if<delivery>(&what)) deliver(*d);
    else if (auto* s = std::get_if<std::shared_ptr<sleeper>>(&what)) (*s)->complete(true);
    else std::get<std::function<void()>>(what)();
    return true;
  }

  std::uint32_t index(const std::string& id) const {
    auto it = index_of.find(id);
    if (it == index_of.end()) throw std::invalid_argument("sim_network: unknown node " + id);
    return static_cast<std::uint32_t>(it->second);
  }
  sim_node& node(const std::string& id) const { return *nodes[index(id)]; }

  // Traffic from a can reach b.
  bool can_send(const sim_node& a, const sim_node& b) const {
    return a.alive && b.alive && a.attached && b.attached &&
           (blocked.empty() || !blocked.contains({a.desc.id, b.desc.id}));
  }
  // A connection needs both directions (a handshake is a round trip).
  bool reachable(const sim_node& a, const sim_node& b) const {
    return can_send(a, b) && can_send(b, a);
  }

  duration base_delay(std::uint32_t a, std::uint32_t b) const {
    if (!regions) return config.latency;
    const auto rtt = regions->rtt[nodes[a]->region][nodes[b]->region];
    return std::max(duration{1}, (rtt + duration{1}) / 2);  // rounded up: a handshake never beats the round trip
  }

  duration one_way_delay(std::uint32_t a, std::uint32_t b) {
    const auto base = base_delay(a, b).count();
    const auto j = regions ? static_cast<duration::rep>(static_cast<double>(base) * regions->jitter_share)
                           : config.jitter.count();
    auto d = base + (j > 0 ? std::uniform_int_distribution<duration::rep>(-j, j)(rng) : 0);
    return duration(std::max<duration::rep>(d, 0));
  }

  double loss_between(std::uint32_t a, std::uint32_t b) const {
    if (!regions) return 0;
    return nodes[a]->region == nodes[b]->region ? regions->loss_within : regions->loss_between;
  }

  // How long the link a-b stays down from now (0: it is up). Ended
  // outages are swept by flap().
  duration outage_left(std::uint32_t a, std::uint32_t b) const {
    if (down_until.empty()) return duration{0};
    auto it = down_until.find(std::minmax(a, b));
    return it == down_until.end() ? duration{0} : std::max(duration{0}, it->second - now);
  }

  // A connection between a and b can be made (both ways open, link not down).
  bool can_connect(std::uint32_t a, std::uint32_t b) const {
    return reachable(*nodes[a], *nodes[b]) && outage_left(a, b) == duration{0};
  }

  void flap(sim_node& a, const std::string& peer, duration down_for) {
    std::erase_if(down_until, [this](const auto& e) { return e.second <= now; });
    auto it = a.links.find(peer);
    if (it == a.links.end()) return;
    const auto ai = index(a.desc.id);
    auto& until = down_until[std::minmax(ai, it->second.peer)];
    until = std::max(until, now + down_for);
    ++stats.links_flapped;
    if (down_for >= config.failure_detection) fail_link(a, peer, it->second.epoch);
  }

  duration flap_interval() const {
    return duration{std::max<duration::rep>(1, static_cast<duration::rep>(1000.0 / flaps_per_second))};
  }

  // One random link of a random live node flaps, then the next is due.
  void flap_tick(std::uint64_t generation) {
    if (generation != flap_generation || flaps_per_second <= 0) return;
    // Best effort: a tick that finds no live node with a live peer in a few
    // draws flaps nothing.
    for (int tries = 0; tries < 16 && !nodes.empty(); ++tries) {
      auto& n = *nodes[std::uniform_int_distribution<std::size_t>(0, nodes.size() - 1)(rng)];
      if (!n.alive) continue;
      std::vector<std::string> peers;
      for (const auto& [id, l] : n.links)
        if (nodes[l.peer]->alive) peers.push_back(id);
      if (peers.empty()) continue;
      flap(n, peers[std::uniform_int_distribution<std::size_t>(0, peers.size() - 1)(rng)], flap_length);
      break;
    }
    schedule(flap_interval(), [this, generation] { flap_tick(generation); });
  }

  bool roll(double p) { return p > 0 && std::uniform_real_distribution<double>(0, 1)(rng) < p; }

  // Ends one side of a link if it is still the same link.
  void drop_side(sim_node& n, const std::string& peer, std::uint64_t epoch, disconnect_reason why) {
    auto it = n.links.find(peer);
    if (it == n.links.end() || it->second.epoch != epoch) return;
    n.links.erase(it);
    ++n.counters.connections_closed;
    if (why == disconnect_reason::heartbeat_timeout) ++n.counters.heartbeat_timeouts;
    if (n.attached && n.on_disconnected) n.on_disconnected(peer, why);
  }

  // A link that stops carrying traffic: both sides notice after the
  // failure-detection delay, as heartbeats would.
  void fail_link(sim_node& a, const std::string& b_id, std::uint64_t epoch) {
    const auto a_id = a.desc.id;
    schedule(config.failure_detection, [this, a_id, b_id, epoch] {
      drop_side(node(a_id), b_id, epoch, disconnect_reason::heartbeat_timeout);
      drop_side(node(b_id), a_id, epoch, disconnect_reason::heartbeat_timeout);
    });
  }

  void deliver(delivery& d) {
    auto& dst = *nodes[d.to];
    const auto& from = nodes[d.from]->desc.id;
    if ((!dst.parked.empty() || dst.holds->any()) && (dst.holds->held(from) || dst.parked.contains(from))) {
      dst.parked[from].push_back({d.epoch, d.ch, std::move(d.body)});
      return;
    }
    handle(dst, from, d.epoch, d.ch, d.body);
  }

  // A peer's last hold is gone: what waited is read, in order, until the
  // peer is held again.
  void resume(const std::string& to, const std::string& from) {
    auto& dst = node(to);
    auto it = dst.parked.find(from);
    while (it != dst.parked.end() && !dst.holds->held(from)) {
      auto m = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) dst.parked.erase(it);
      handle(dst, from, m.epoch, m.ch, m.body);
      it = dst.parked.find(from);  // the handler may have parked more
    }
  }

  void handle(sim_node& dst, const std::string& from, std::uint64_t epoch, channel ch, const shared_bytes& body) {
    auto it = dst.links.find(from);
    if (it == dst.links.end() || it->second.epoch != epoch || !dst.alive || !dst.attached) {
      ++stats.messages_lost;
      return;
    }
    ++stats.messages_delivered;
    ++dst.counters.frames_received;
    dst.counters.bytes_received += body.size() + 5;
    auto& handler = dst.on_message[static_cast<std::size_t>(ch)];
    // Not a message at all: counted (a TCP link would also be cut).
    if (handler && !handler(from, byte_slice(body))) ++dst.counters.bad_frames;
  }
};

namespace {

// One sleep's completion handler until its instant comes or it is cancelled.
template <class Handler>
struct waiting final : sleeper, std::enable_shared_from_this<waiting<Handler>> {
  waiting(Handler h, asio::io_context::executor_type fallback) : handler(std::move(h)), io_ex(fallback) {}

  void watch_cancellation() {
    auto slot = asio::get_associated_cancellation_slot(*handler);
    if (!slot.is_connected()) return;
    std::weak_ptr<waiting> weak = this->shared_from_this();
    slot.assign([weak](asio::cancellation_type) {
      if (auto self = weak.lock()) self->complete(false);
    });
  }

  // Posted, never run inline: the caller is the timeline or a cancellation.
  // The slot is left as it is (clearing it cost 6 % of a run, and from
  // inside its own handler it would destroy the running code): what it
  // holds finds this object gone, and the next operation replaces it.
  void complete(bool fired) override {
    if (!handler) return;
    Handler h = std::move(*handler);
    handler.reset();
    auto ex = asio::get_associated_executor(h, io_ex);
    asio::post(ex, [h = std::move(h), fired]() mutable { std::move(h)(fired); });
  }

  std::optional<Handler> handler;
  asio::io_context::executor_type io_ex;
};

class sim_scheduler final : public scheduler {
 public:
  // `node`: the node whose (changeable) wall skew applies, or nullptr for a fixed `skew`.
  sim_scheduler(sim_network::impl& net, duration skew, const sim_node* node = nullptr)
      : net_(net), skew_(skew), node_(node) {}
  executor get_executor() const override { return net_.io.get_executor(); }
  duration now() const override { return net_.now; }
  std::uint64_t wall_ms() const override {
    const auto skew = node_ ? node_->wall_skew : skew_;
    return net_.config.epoch_ms + static_cast<std::uint64_t>((net_.now + skew).count());
  }
  // No Asio timer: the completion waits on the timeline itself. Cancelled
  // (by an awaitable operator, say), it completes at once with false.
  task<bool> sleep(duration d) override {
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(bool)>(
        [this, d](auto handler) {
          auto s = std::make_shared<waiting<decltype(handler)>>(std::move(handler), net_.io.get_executor());
          s->watch_cancellation();
          net_.schedule(d, std::shared_ptr<sleeper>(s));
        },
        asio::use_awaitable);
  }

 private:
  sim_network::impl& net_;
  duration skew_;
  const sim_node* node_;
};

class sim_transport final : public transport {
 public:
  sim_transport(sim_network::impl& net, std::uint32_t index) : net_(net), index_(index) {}
  ~sim_transport() override { detach(false); }

  const peer_descriptor& self() const override { return me().desc; }
  void on_connected(connected_handler h) override { me().on_connected = std::move(h); }
  void on_disconnected(disconnected_handler h) override { me().on_disconnected = std::move(h); }
  void on_message(channel ch, message_handler h) override {
    me().on_message[static_cast<std::size_t>(ch)] = std::move(h);
  }

  task<> start() override { co_return; }
  task<> stop() override {
    detach(true);
    co_return;
  }

  task<std::optional<peer_descriptor>> connect(peer_address addr) override {
    return dial(net_, index_, std::move(addr));
  }

  // Static, on the network's state only: the transport may be destroyed
  // while a dial waits (a node that crashes), the network never is.
  static task<std::optional<peer_descriptor>> dial(sim_network::impl& net, std::uint32_t index, peer_address addr) {
    auto me = [&net, index]() -> sim_node& { return *net.nodes[index]; };
    if (addr.host != "sim" || addr.port >= net.nodes.size() || addr.port == index || !me().attached) {
      ++me().counters.connect_failures;
      co_return std::nullopt;
    }
    const std::uint32_t target_index = addr.port;
    {
      auto& target = *net.nodes[target_index];
      if (me().links.contains(target.desc.id)) co_return target.desc;
      if (!net.can_connect(index, target_index)) {
        co_await pause(net, net.config.connect_timeout);
        ++me().counters.connect_failures;
        co_return std::nullopt;
      }
    }
    co_await pause(net, net.base_delay(index, target_index) * 2);  // the handshake's round trip
    auto& a = me();
    auto& b = *net.nodes[target_index];
    if (!a.attached) co_return std::nullopt;  // its transport went meanwhile
    if (a.links.contains(b.desc.id)) co_return b.desc;  // the other side dialled meanwhile
    if (!net.can_connect(index, target_index)) {
      ++a.counters.connect_failures;
      co_return std::nullopt;
    }
    const auto epoch = net.next_epoch++;
    a.links[b.desc.id] = {epoch, target_index};
    b.links[a.desc.id] = {epoch, index};
    ++a.counters.connections_opened;
    ++b.counters.connections_opened;
    const auto a_desc = a.desc;
    const auto b_desc = b.desc;
    if (b.on_connected) b.on_connected(a_desc, true);
    // The callee's handler may have closed the link again.
    if (me().links.contains(b_desc.id) && me().on_connected) me().on_connected(b_desc, false);
    co_return b_desc;
  }

  bool send(const std::string& peer_id, channel ch, const message_body& body) override {
    auto& a = me();
    auto it = a.links.find(peer_id);
    if (it == a.links.end()) return false;
    const auto epoch = it->second.epoch;
    const auto peer = it->second.peer;
    ++a.counters.frames_sent;
    a.counters.bytes_sent += body.size() + 5;
    ++net_.stats.messages_sent;
    net_.stats.bytes_sent += body.size() + 5;
    ++net_.stats.per_channel_sent[static_cast<std::size_t>(ch)];
    auto& b = *net_.nodes[peer];
    const auto from = index_;
    if (!net_.can_send(a, b) || net_.roll(net_.config.loss) || net_.roll(net_.loss_between(from, peer))) {
      ++net_.stats.messages_lost;
      return true;  // sent as far as the sender can tell
    }
    const int copies = net_.roll(net_.config.duplicate) ? 2 : 1;
    // What the receiver reads is the frame body in one buffer, as over TCP.
    const shared_bytes received = body.to_shared();
    const auto wait = net_.outage_left(from, peer);
    if (wait > duration{0}) ++net_.stats.messages_held;
    for (int i = 0; i < copies; ++i)
      net_.schedule(wait + net_.one_way_delay(from, peer) + a.extra_delay + b.extra_delay,
                    delivery{from, peer, epoch, ch, received});
    return true;
  }

  void disconnect(const std::string& peer_id) override {
    auto& a = me();
    auto it = a.links.find(peer_id);
    if (it == a.links.end()) return;
    const auto epoch = it->second.epoch;
    const auto peer = it->second.peer;
    net_.drop_side(a, peer_id, epoch, disconnect_reason::closed_locally);
    // Drawn after the local handler ran, which may send (and draw) itself.
    net_.schedule(net_.one_way_delay(index_, peer), [net = &net_, from = a.desc.id, peer_id, epoch] {
      net->drop_side(net->node(peer_id), from, epoch, disconnect_reason::closed_by_peer);
    });
  }

  bool is_connected(const std::string& peer_id) const override {
    return me().links.contains(peer_id);
  }
  std::vector<std::string> connected_peers() const override {
    std::vector<std::string> out;
    for (const auto& [id, l] : me().links) out.push_back(id);
    return out;
  }
  const transport_counters& counters() const override { return me().counters; }
  read_hold hold_reading(const std::string& peer_id) override {
    bool first = false;
    auto hold = me().holds->take(peer_id, &first);
    if (first) ++me().counters.read_holds;
    return hold;
  }

 private:
  sim_node& me() const { return *net_.nodes[index_]; }

  static task<> pause(sim_network::impl& net, duration d) {
    sim_scheduler s(net, duration{0});
    co_await s.sleep(d);
  }

  // Leaves the network: peers see their connections close; this node's
  // handlers are no longer called (they may belong to destroyed objects).
  void detach(bool notify_self) {
    auto& a = me();
    if (!a.attached) return;
    std::vector<std::tuple<std::string, std::uint64_t, std::uint32_t>> links;
    for (const auto& [peer, l] : a.links) links.emplace_back(peer, l.epoch, l.peer);
    for (const auto& [peer, epoch, peer_index] : links) {
      if (notify_self) net_.drop_side(a, peer, epoch, disconnect_reason::closed_locally);
      net_.schedule(net_.one_way_delay(index_, peer_index), [net = &net_, from = a.desc.id, peer, epoch] {
        net->drop_side(net->node(peer), from, epoch, disconnect_reason::closed_by_peer);
      });
    }
    a.links.clear();
    a.attached = false;
    a.on_connected = nullptr;
    a.on_disconnected = nullptr;
    for (auto& h : a.on_message) h = nullptr;
  }

  sim_network::impl& net_;
  std::uint32_t index_;
};

}  // namespace

sim_network::sim_network(asio::io_context& io, sim_config config)
    : impl_(std::make_unique<impl>(io, config)) {}

sim_network::~sim_network() = default;

std::unique_ptr<transport> sim_network::add_node(const std::string& id) {
  if (id.empty() || impl_->index_of.contains(id))
    throw std::invalid_argument("sim_network: node id empty or taken: " + id);
  const auto index = impl_->nodes.size();
  if (index > 65535) throw std::length_error("sim_network: at most 65536 nodes");
  auto n = std::make_unique<sim_node>();
  n->desc = {id, {"sim", static_cast<std::uint16_t>(index)}};
  // Resumed from the timeline, not inside the releasing code (often a
  // handler itself).
  n->holds = std::make_unique<detail::read_hold_table>([net = impl_.get(), id](const std::string& peer) {
    net->schedule(duration{0}, [net, id, peer] { net->resume(id, peer); });
  });
  impl_->nodes.push_back(std::move(n));
  impl_->index_of[id] = index;
  return std::make_unique<sim_transport>(*impl_, static_cast<std::uint32_t>(index));
}

std::unique_ptr<scheduler> sim_network::make_scheduler(duration wall_skew) {
  return std::make_unique<sim_scheduler>(*impl_, wall_skew);
}

std::unique_ptr<scheduler> sim_network::make_scheduler(const std::string& id) {
  return std::make_unique<sim_scheduler>(*impl_, duration{0}, &impl_->node(id));
}

void sim_network::set_wall_skew(const std::string& id, duration skew) { impl_->node(id).wall_skew = skew; }

void sim_network::run_for(duration d) {
  const auto end = impl_->now + d;
  while (impl_->step(end)) {
  }
  impl_->now = end;
  impl_->io.restart();
  impl_->io.poll();
}

bool sim_network::run_until(const std::function<bool()>& done, duration limit) {
  const auto end = impl_->now + limit;
  auto checked_at = duration{-1};
  for (;;) {
    // Checking once per distinct instant keeps an expensive predicate cheap.
    if (impl_->now != checked_at) {
      impl_->io.restart();
      impl_->io.poll();
      if (done()) return true;
      checked_at = impl_->now;
    }
    if (!impl_->step(end)) break;
  }
  impl_->now = end;
  impl_->io.restart();
  impl_->io.poll();
  return done();
}

duration sim_network::now() const { return impl_->now; }

void sim_network::kill(const std::string& id) {
  auto& n = impl_->node(id);
  if (!n.alive) return;
  n.alive = false;
  for (const auto& [peer, l] : n.links) impl_->fail_link(n, peer, l.epoch);
}

void sim_network::revive(const std::string& id) { impl_->node(id).alive = true; }

bool sim_network::alive(const std::string& id) const { return impl_->node(id).alive; }

void sim_network::partition(const std::set<std::string>& a, const std::set<std::string>& b,
                            bool one_way) {
  for (const auto& x : a)
    for (const auto& y : b) {
      impl_->blocked.insert({x, y});
      if (!one_way) impl_->blocked.insert({y, x});
    }
  for (const auto& x : a) {
    auto& n = impl_->node(x);
    for (const auto& [peer, l] : n.links)
      if (b.contains(peer)) impl_->fail_link(n, peer, l.epoch);
  }
}

void sim_network::heal() { impl_->blocked.clear(); }
void sim_network::set_loss(double loss) { impl_->config.loss = loss; }
void sim_network::set_duplicate(double share) { impl_->config.duplicate = share; }
void sim_network::set_node_delay(const std::string& id, duration extra) { impl_->node(id).extra_delay = extra; }
void sim_network::set_latency(duration latency, duration jitter) {
  impl_->config.latency = latency;
  impl_->config.jitter = jitter;
}
void sim_network::set_regions(sim_regions r) {
  const auto n = r.names.size();
  auto share = [](double p) { return p >= 0 && p <= 1; };
  bool ok = n > 0 && r.rtt.size() == n && share(r.jitter_share) && share(r.loss_within) && share(r.loss_between);
  for (std::size_t i = 0; ok && i < n; ++i) {
    ok = r.rtt[i].size() == n;
    for (std::size_t j = 0; ok && j < n; ++j) ok = r.rtt[i][j] >= duration{0};
  }
  for (std::size_t i = 0; ok && i < n; ++i)
    for (std::size_t j = 0; ok && j < n; ++j) ok = r.rtt[i][j] == r.rtt[j][i];
  if (!ok)
    throw std::invalid_argument("sim_network: regions need a square, symmetric rtt matrix of non-negative times, "
                                "one row per name, and a jitter share and losses in [0, 1]");
  for (auto& node : impl_->nodes)
    if (node->region >= n) node->region = 0;
  impl_->regions = std::move(r);
}

void sim_network::set_region(const std::string& id, std::size_t region) {
  const auto n = impl_->regions ? impl_->regions->names.size() : 1;
  if (region >= n) throw std::invalid_argument("sim_network: no region " + std::to_string(region));
  impl_->node(id).region = static_cast<std::uint32_t>(region);
}

std::size_t sim_network::region_of(const std::string& id) const {
  return impl_->node(id).region;
}

duration sim_network::base_delay(const std::string& a, const std::string& b) const {
  return impl_->base_delay(impl_->index(a), impl_->index(b));
}

void sim_network::flap(const std::string& a, const std::string& b, duration down_for) {
  impl_->index(b);  // both must exist
  impl_->flap(impl_->node(a), b, down_for);
}

void sim_network::set_flapping(double per_second, duration down_for) {
  impl_->flaps_per_second = per_second;
  impl_->flap_length = down_for;
  const auto generation = ++impl_->flap_generation;
  if (per_second > 0)
    impl_->schedule(impl_->flap_interval(), [net = impl_.get(), generation] { net->flap_tick(generation); });
}

const sim_stats& sim_network::stats() const { return impl_->stats; }
const sim_config& sim_network::config() const { return impl_->config; }

}  // namespace barrel_p2p
