// One node: transport, membership, broadcast, clock and replica host,
// assembled and started in the right order, stopped in the reverse one.
//
// Maps (map.hpp), elections, the registry, members, placement, reminders
// and queries attach to a node; the HTTP surface and the daemon sit on top
// of those. A node runs on ONE executor: a strand the node creates over the
// executor it is given (on the simulated network, the simulation's
// executor). Where each call may be made, for the node and every layer:
//   * a function returning a task hops onto the strand itself, so any
//     executor may await it. Except event_stream::next (and campaign::next,
//     which reads one), and the members of the layers below the node
//     (transport, hyparview, plumtree, clock_monitor, replica_host), which
//     hop nowhere;
//   * any other function touches its layer's state without a lock: call
//     it on the node's executor (map::open, registry::open and
//     elections::open, subscribe() and watch(), elections::leader, lookups,
//     counters...), unless its comment says "any thread" (map reads,
//     reminders::get and list, what is fixed at construction).
// "On the node's executor": code co_spawned on get_executor(); with an
// io_context run by one thread, any code on that thread. Callbacks the
// library calls (validators, handlers, listeners) run there and must not
// block.
#pragma once

#include <barrel_p2p/clock_monitor.hpp>
#include <barrel_p2p/hlc.hpp>
#include <barrel_p2p/hyparview.hpp>
#include <barrel_p2p/log.hpp>
#include <barrel_p2p/plumtree.hpp>
#include <barrel_p2p/replica.hpp>
#include <barrel_p2p/scheduler.hpp>
#include <barrel_p2p/tcp_transport.hpp>
#include <barrel_p2p/transport.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <vector>

namespace barrel_p2p {

class sim_network;

struct node_config {
  /// Transport: id, listen address, cluster secret, limits, heartbeats.
  tcp_transport_config transport;
  /// Nodes to join through at start (any one that answers is enough).
  std::vector<peer_address> contacts;
  /// Where persisted maps keep their files (one subdirectory per map).
  /// Empty: persistence is unavailable on this node.
  std::filesystem::path data_dir;
  hyparview_config membership;
  plumtree_config broadcast;
  replica_config replicas;
  /// HLC maximum forward offset for timestamps from peers.
  std::chrono::milliseconds max_clock_offset = hlc_clock::default_max_offset;
  /// Peer clock offsets: how often they are measured, and what this node
  /// does when its own clock is ahead of the cluster (refuse local writes).
  clock_monitor_config clocks;
  /// One-line log sink shared by every layer that has none of its own
  /// (log.hpp). Empty: stderr_log_sink(), timestamped lines on standard error.
  log_sink log;
};

/// Timings for every layer of a node, chosen together (then change any
/// field of the config it gives).
enum class node_profile {
  /// The defaults: a data-centre network. Heartbeats every 1 s, a silent
  /// peer failed after 5 s, membership maintenance every 500 ms, shuffles
  /// every 10 s, anti-entropy every 5 s.
  lan,
  /// One host, or a fast local network: a silent peer failed after 1.5 s
  /// (heartbeats every 200 ms), membership maintenance every 100 ms,
  /// shuffles every 1 s, anti-entropy every 500 ms. More background traffic
  /// for faster repair.
  local,
  /// `local`, with log lines dropped (set BARREL_TEST_LOG in the environment
  /// to see them on standard error): what the library's own tests build on.
  test,
};

/// A node config for `profile`, with its id and cluster secret set. Any
/// thread.
[[nodiscard]] node_config make_node_config(node_profile profile, std::string id, std::string cluster_secret);

/// What node::start() found at its contacts.
struct join_result {
  /// A contact took this node in: it is in the cluster. False with no
  /// contacts (the first node) and when no contact did (the node keeps
  /// trying them in the background; node::wait_joined waits for that).
  bool joined = false;
  /// The contact that took this node in.
  std::optional<peer_address> via;
  /// Contacts that did not (unreachable, another cluster key, this node's
  /// own address...), in the order tried.
  std::vector<peer_address> not_joined;
  /// A contact answered under this node's own id: another process uses it.
  /// The two can never connect; give each node its own id.
  std::optional<peer_address> duplicate_id_at;
};

/// Where a node's transport and time come from: what node's one
/// constructor takes. Every layer above the transport is the same whichever
/// it is.
class node_network {
 public:
  /// Wraps a transport the node made in one of the caller's (a test that
  /// watches or changes traffic): gets the node's transport, returns the
  /// transport the node uses, which must forward to it.
  using transport_wrapper = std::function<std::unique_ptr<transport>(std::unique_ptr<transport>)>;

  /// Real TCP (tcp_transport, from node_config::transport) and real time.
  /// `ex` may be any executor (a multi-threaded io_context too): the node
  /// makes a strand over it; its execution context must outlive the node.
  [[nodiscard]] static node_network tcp(executor ex, transport_wrapper wrap = {});
  /// The simulated network: its transport and virtual-time scheduler;
  /// `config.transport.node_id` names the node, and
  /// sim_network::set_wall_skew shifts its wall clock. `net` must outlive
  /// the node.
  [[nodiscard]] static node_network simulated(sim_network& net);

 private:
  friend class node;
  node_network() = default;
  executor ex_;
  sim_network* sim_ = nullptr;
  transport_wrapper wrap_;
};

class node {
 public:
  /// The one way a node is assembled: its transport and scheduler from
  /// `where`, then membership, clock monitor, broadcast and replica host
  /// over them. Any thread.
  node(node_network where, node_config config);
  /// node(node_network::tcp(ex), config).
  node(executor ex, node_config config);
  /// node(node_network::simulated(net), config).
  node(sim_network& net, node_config config);
  /// On the node's executor, or where nothing runs that executor (its
  /// io_context stopped or its threads joined): the layers' state is freed
  /// here, and a handler running at the same time would use it.
  ~node();
  node(const node&) = delete;
  node& operator=(const node&) = delete;

  /// Starts listening and every layer, then tries the contacts in order
  /// until one takes this node in, and says what happened. Listening or
  /// binding failures throw. A node that joined no contact is still
  /// running: it keeps dialling its contacts with backoff while its active
  /// view is empty. Any executor. The node may be destroyed while this
  /// waits (a crash in the simulator): it then returns what it found.
  task<join_result> start();
  /// Waits until this node has at least one active peer (it is in a
  /// cluster), or until `timeout` has passed, or the node stops. True when
  /// it has one. Returns at once when it already has. Any executor. The
  /// node must outlive it.
  task<bool> wait_joined(duration timeout);
  /// Closes what is attached (maps...), leaves the cluster politely and
  /// stops every layer; returns when done. Any executor. The node must
  /// outlive it.
  task<> stop();

  /// Fixed at construction: any thread.
  [[nodiscard]] const std::string& id() const;
  /// Its port is set by start() when listen_port is 0: read it on the
  /// node's executor, or once start() has returned.
  [[nodiscard]] const peer_descriptor& self() const;
  /// Fixed at construction (the cluster keys cleared from it): any thread.
  [[nodiscard]] const node_config& config() const;
  [[nodiscard]] executor get_executor() const;  ///< the node's strand; any thread
  /// True on the simulated network (virtual time: persisted maps write
  /// inline there, see map_store's store_mode). Any thread.
  [[nodiscard]] bool simulated() const;

  /// Replaces the cluster keys (psk mode; see tcp_transport::set_cluster_secrets)
  /// or re-reads the certificate files (certificates mode) for connections
  /// made from now on. Throws what the transport throws, and
  /// std::logic_error on the simulated network. Any executor.
  task<> set_cluster_secrets(std::string primary, std::vector<std::string> accepted);
  task<> reload_certificates();

  /// The layers, owned by the node and destroyed with it. The references
  /// may be taken anywhere; the layers are used on the node's executor.
  [[nodiscard]] transport& net();
  [[nodiscard]] scheduler& sched();
  [[nodiscard]] hlc_clock& clock();
  /// Peer clock offsets and the skew guard on local writes.
  [[nodiscard]] clock_monitor& clocks();
  [[nodiscard]] hyparview& membership();
  [[nodiscard]] plumtree& broadcast();
  [[nodiscard]] replica_host& replicas();

  /// What the layers above (maps, elections, the registry...) attach to the
  /// node: at most one object per type and name (the name tells instances
  /// of one type apart: a map's name, a placement group; "" for the one
  /// object of its type). The node holds what is attached until it is
  /// detached (a map's close()) or the node stops: dropping every other
  /// handle does not close it. node::stop() stops them newest first (a
  /// placement group before the registry it opened). Node's executor.
  struct attachment {
    virtual ~attachment() = default;
    /// Called by node::stop() before the layers below stop, so that maps
    /// and the like close cleanly (flush, stop their replica instances).
    virtual task<> on_node_stop() { co_return; }
    /// Called by ~node for an attachment still held elsewhere: let go of
    /// everything that belongs to the node (replica instances, loops), so
    /// that later calls fail cleanly instead of reaching a destroyed node.
    virtual void on_node_destroyed() noexcept {}
  };
  /// The T attached under `name`, or null.
  template <class T>
  [[nodiscard]] std::shared_ptr<T> find_attachment(const std::string& name = {}) const {
    static_assert(std::is_base_of_v<attachment, T>);
    // The key holds T's type: what is found there is a T.
    return std::static_pointer_cast<T>(find_attached(typeid(T), name));
  }
  /// Attaches `a` under `name`, replacing a T attached there before.
  template <class T>
  void set_attachment(std::shared_ptr<T> a, const std::string& name = {}) {
    static_assert(std::is_base_of_v<attachment, T>);
    attach(typeid(T), name, std::move(a));
  }
  /// Detaches the T under `name`, if any.
  template <class T>
  void clear_attachment(const std::string& name = {}) {
    detach(typeid(T), name);
  }

 private:
  [[nodiscard]] std::shared_ptr<attachment> find_attached(std::type_index type, const std::string& name) const;
  void attach(std::type_index type, const std::string& name, std::shared_ptr<attachment> a);
  void detach(std::type_index type, const std::string& name);

  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace barrel_p2p
