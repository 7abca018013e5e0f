#include "barrel_p2p/node.hpp"
#include "barrel_p2p/log.hpp"

#include "barrel_p2p/sim_network.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "barrel_p2p/detail/wake_signal.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <utility>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>

namespace barrel_p2p {

struct node::impl {
  node_config config;
  executor strand;
  std::unique_ptr<scheduler> sched;
  std::unique_ptr<transport> net;
  tcp_transport* tcp = nullptr;  // the same object when on TCP
  std::unique_ptr<hlc_clock> clock;
  std::unique_ptr<hyparview> membership;
  std::unique_ptr<clock_monitor> clocks;
  std::unique_ptr<plumtree> broadcast;
  std::unique_ptr<replica_host> replicas;
  // By type and name; `order` counts attachments so stop() can go newest
  // first.
  struct attached {
    std::uint64_t order = 0;
    std::shared_ptr<attachment> object;
  };
  std::map<std::pair<std::type_index, std::string>, attached> attachments;
  std::uint64_t attach_count = 0;
  // Newest first.
  std::vector<std::shared_ptr<attachment>> attached_newest_first() const {
    std::vector<const attached*> all;
    for (const auto& [key, a] : attachments) all.push_back(&a);
    std::sort(all.begin(), all.end(), [](const auto* x, const auto* y) { return x->order > y->order; });
    std::vector<std::shared_ptr<attachment>> out;
    for (const auto* a : all) out.push_back(a->object);
    return out;
  }
  // wait_joined: its waiters (woken by peer_up and stop) and their timers.
  std::vector<std::shared_ptr<wake_signal>> join_waiters;
  std::unique_ptr<task_group> timers;
  bool started = false;
  bool stopped = false;
  // False once ~node has run: a start() still under way (its frame outlives
  // the node) must not touch the layers after its next resumption.
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);

  explicit impl(node_config c) : config(std::move(c)) {
    if (!config.log) config.log = stderr_log_sink();
    for (auto* l : {&config.membership.log, &config.broadcast.log, &config.replicas.log, &config.transport.log,
                    &config.clocks.log})
      if (!*l) *l = config.log;
    // A seeded membership makes the whole node deterministic (the simulator).
    if (!config.clocks.seed && config.membership.seed) config.clocks.seed = config.membership.seed ^ 0x9e3779b97f4a7c15ULL;
  }

  // The layers above the transport are the same on TCP and on the simulator.
  void assemble() {
    clock = std::make_unique<hlc_clock>([s = sched.get()] { return s->wall_ms(); }, config.max_clock_offset);
    membership = std::make_unique<hyparview>(*net, *sched, config.membership);
    clocks = std::make_unique<clock_monitor>(*net, *membership, *sched, *clock, config.clocks);
    broadcast = std::make_unique<plumtree>(*net, *membership, *sched, config.broadcast);
    replicas = std::make_unique<replica_host>(*net, *membership, *broadcast, *sched, *clock, config.replicas);
    replicas->set_write_guard([c = clocks.get()] { c->check_writable(); });
    timers = std::make_unique<task_group>(strand);
    membership->add_listener([this](const membership_event& e) {
      if (e.what == membership_event::kind::peer_up) wake_join_waiters();
    });
  }

  void wake_join_waiters() {
    for (auto& w : join_waiters) w->notify();
  }

  static task<join_result> do_start(impl& m);
  static task<bool> do_wait_joined(impl& m, duration timeout);
  static task<> do_stop(impl& m);

};

node_config make_node_config(node_profile profile, std::string id, std::string cluster_secret) {
  using namespace std::chrono_literals;
  node_config c;
  c.transport.node_id = std::move(id);
  c.transport.cluster_secret = std::move(cluster_secret);
  if (profile == node_profile::lan) return c;
  c.transport.heartbeat_interval = 200ms;
  c.transport.heartbeat_timeout = 1500ms;
  c.membership.maintenance_interval = 100ms;
  c.membership.shuffle_interval = 1s;
  c.replicas.anti_entropy_interval = 500ms;
  if (profile == node_profile::test)
    c.log = [](const std::string& line) {
      if (std::getenv("BARREL_TEST_LOG")) std::fprintf(stderr, "%s\n", line.c_str());
    };
  return c;
}

node_network node_network::tcp(executor ex, transport_wrapper wrap) {
  node_network n;
  n.ex_ = std::move(ex);
  n.wrap_ = std::move(wrap);
  return n;
}

node_network node_network::simulated(sim_network& net) {
  node_network n;
  n.sim_ = &net;
  return n;
}

node::node(node_network where, node_config config) : impl_(std::make_unique<impl>(std::move(config))) {
  auto& m = *impl_;
  if (where.sim_) {
    m.net = where.sim_->add_node(m.config.transport.node_id);
    m.sched = where.sim_->make_scheduler(m.config.transport.node_id);
    m.strand = m.sched->get_executor();  // the simulator is single-threaded
  } else {
    m.strand = boost::asio::make_strand(where.ex_);
    m.sched = make_real_scheduler(m.strand);
    auto tcp = make_tcp_transport(m.config.transport, *m.sched);
    m.tcp = tcp.get();
    m.net = std::move(tcp);
    // The keys live in the transport's keyring now; no second copy that a
    // rotation would leave behind.
    m.config.transport.cluster_secret.clear();
    m.config.transport.accepted_secrets.clear();
  }
  if (where.wrap_) {
    m.net = where.wrap_(std::move(m.net));
    if (!m.net) throw std::invalid_argument("node: the transport wrapper returned no transport");
  }
  m.assemble();
}

node::node(executor ex, node_config config) : node(node_network::tcp(std::move(ex)), std::move(config)) {}

node::node(sim_network& net, node_config config) : node(node_network::simulated(net), std::move(config)) {}

bool node::simulated() const { return impl_->tcp == nullptr; }

node::~node() {
  *impl_->alive = false;
  // A wait_joined still pending ends now (false), not with a leaked frame.
  for (auto& w : std::exchange(impl_->join_waiters, {})) w->close();
  // Attachments someone still holds must not reach the layers destroyed
  // next; the rest go with the registry.
  auto attached = impl_->attached_newest_first();
  impl_->attachments.clear();
  for (auto& a : attached) a->on_node_destroyed();
}

task<join_result> node::start() {
  co_return co_await boost::asio::co_spawn(impl_->strand, impl::do_start(*impl_), boost::asio::use_awaitable);
}

task<join_result> node::impl::do_start(impl& m) {
  join_result result;
  if (m.started) {
    result.joined = !m.membership->active_view().empty();
    co_return result;
  }
  m.started = true;
  const auto alive = m.alive;  // `m` may be destroyed while this waits (a node that crashes)
  const auto contacts = m.config.contacts;
  co_await m.net->start();
  if (!*alive) co_return result;
  m.membership->start();
  m.clocks->start();
  m.broadcast->start();
  m.replicas->start();
  // All of them, for rejoins: the one that takes this node in may be the
  // first to go (the nemesis found a node alone for good: seed 189).
  for (const auto& contact : contacts) m.membership->remember_contact(contact);
  for (const auto& contact : contacts) {
    const bool joined = co_await m.membership->join(contact);
    if (!*alive) co_return result;
    if (joined) {
      result.joined = true;
      result.via = contact;
      break;
    }
    result.not_joined.push_back(contact);
    if (!result.duplicate_id_at && m.net->last_dial_failure(contact) == handshake_failure::duplicate_id)
      result.duplicate_id_at = contact;
  }
  co_return result;
}

task<bool> node::wait_joined(duration timeout) {
  co_return co_await boost::asio::co_spawn(impl_->strand, impl::do_wait_joined(*impl_, timeout),
                                           boost::asio::use_awaitable);
}

task<bool> node::impl::do_wait_joined(impl& m, duration timeout) {
  const auto alive = m.alive;  // `m` may be destroyed while this waits
  // A day at most: "wait forever" as duration::max() must not overflow.
  const auto deadline = m.sched->now() + std::min(timeout, duration(std::chrono::hours(24)));
  while (m.membership->active_view().empty() && !m.stopped) {
    const auto now = m.sched->now();
    if (now >= deadline) break;
    auto wake = std::make_shared<wake_signal>(m.strand);
    m.join_waiters.push_back(wake);
    m.timers->spawn("wait_joined", notify_after(*m.sched, wake, deadline - now));
    const bool woken = co_await wake->wait();
    if (!*alive) co_return false;
    std::erase(m.join_waiters, wake);
    wake->close();
    if (!woken) break;  // cancelled
  }
  co_return !m.membership->active_view().empty();
}

task<> node::stop() {
  co_await boost::asio::co_spawn(impl_->strand, impl::do_stop(*impl_), boost::asio::use_awaitable);
}

task<> node::impl::do_stop(impl& m) {
  if (m.stopped || !m.started) co_return;
  m.stopped = true;
  m.wake_join_waiters();
  const auto live = m.attached_newest_first();
  for (const auto& a : live) co_await a->on_node_stop();
  m.attachments.clear();
  co_await m.replicas->stop();
  co_await m.membership->leave();
  co_await m.broadcast->stop();
  co_await m.clocks->stop();
  co_await m.timers->stop();
  co_await m.net->stop();
}

task<> node::set_cluster_secrets(std::string primary, std::vector<std::string> accepted) {
  co_await boost::asio::dispatch(impl_->strand, boost::asio::use_awaitable);
  if (!impl_->tcp) throw std::logic_error("node: no cluster keys on the simulated network");
  impl_->tcp->set_cluster_secrets(std::move(primary), std::move(accepted));
}

task<> node::reload_certificates() {
  co_await boost::asio::dispatch(impl_->strand, boost::asio::use_awaitable);
  if (!impl_->tcp) throw std::logic_error("node: no certificates on the simulated network");
  impl_->tcp->reload_certificates();
}

const std::string& node::id() const { return impl_->net->self().id; }
const peer_descriptor& node::self() const { return impl_->net->self(); }
const node_config& node::config() const { return impl_->config; }
executor node::get_executor() const { return impl_->strand; }
transport& node::net() { return *impl_->net; }
scheduler& node::sched() { return *impl_->sched; }
hlc_clock& node::clock() { return *impl_->clock; }
clock_monitor& node::clocks() { return *impl_->clocks; }
hyparview& node::membership() { return *impl_->membership; }
plumtree& node::broadcast() { return *impl_->broadcast; }
replica_host& node::replicas() { return *impl_->replicas; }

std::shared_ptr<node::attachment> node::find_attached(std::type_index type, const std::string& name) const {
  auto it = impl_->attachments.find({type, name});
  return it == impl_->attachments.end() ? nullptr : it->second.object;
}
void node::attach(std::type_index type, const std::string& name, std::shared_ptr<attachment> a) {
  impl_->attachments[{type, name}] = impl::attached{++impl_->attach_count, std::move(a)};
}
void node::detach(std::type_index type, const std::string& name) { impl_->attachments.erase({type, name}); }

}  // namespace barrel_p2p
