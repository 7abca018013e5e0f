#include "sim_nemesis.hpp"

#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/leader.hpp>
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace barrel_p2p::sim {

namespace {

using namespace std::chrono_literals;

// One operation of the workload, and what became of it.
struct operation {
  enum class kind { put, remove } what = kind::put;
  std::string key;
  int value = 0;  // puts
  std::size_t node = 0;
  duration started{0};
  bool finished = false;
  bool acked = false;
  std::string error;
};

// The faults the schedule draws from. Each lasts a while and is then undone;
// partitions do not overlap (heal() ends them all).
enum class fault {
  split_halves, isolate_one, one_way, freeze_node, loss_spike, clock_ahead, clock_behind, crash_restart,
  disk_full, fsync_fails, torn_write, duplicate_spike, delay_spike, slow_node
};
constexpr const char* fault_names[] = {"split_halves", "isolate_one",  "one_way",       "freeze_node",
                                       "loss_spike",   "clock_ahead",  "clock_behind",  "crash_restart",
                                       "disk_full",    "fsync_fails",  "torn_write",    "duplicate_spike",
                                       "delay_spike",  "slow_node"};

// One draw of the schedule, made whether or not the fault then applies, so
// that skipping fault k (--skip-faults, the shrinker) leaves every other
// fault exactly as it was.
struct fault_draw {
  duration gap{0};           // after the previous draw
  fault what{};
  std::size_t node = 0;      // the node it hits, when it hits one
  double amount = 0;         // in [0, 1): how hard (loss, delay, skew...)
  duration length{0};        // until it is undone
  std::uint64_t shuffle = 0; // a partition's sides
};

// What one node's disk does (the map store's fault hook reads it).
enum class disk_state { healthy, full, fsync_fails, torn_write };

// One term as a node saw itself take it.
struct term {
  std::string node;
  std::uint64_t fence = 0;
  duration at{0};
};
constexpr std::size_t fault_kinds = sizeof(fault_names) / sizeof(fault_names[0]);

std::string ms(duration d) { return std::to_string(d.count()) + " ms"; }

struct world {
  explicit world(std::uint64_t s, const nemesis_options& o)
      : seed(s), net(io, config_for(s)), clock(net.make_scheduler()), rng(s * 7'919 + 17),
        fault_rng(s * 104'729 + 3), options(o) {
    dir = std::filesystem::temp_directory_path() /
          ("barrel-p2p-nemesis-" + std::to_string(::getpid()) + "-" + std::to_string(s));
    std::filesystem::remove_all(dir);
    disks.assign(o.nodes, disk_state::healthy);
    votes.resize(o.nodes);
    for (std::size_t i = 0; i < o.nodes; ++i) nodes.push_back(make_node(i, 0));
    incarnation.assign(o.nodes, 0);
  }
  ~world() {
    votes.clear();
    maps.clear();
    nodes.clear();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  // Slot i's node; a restarted one gets a new id ("n3.1": the simulated
  // network never reuses an address) and the same data directory.
  std::unique_ptr<node> make_node(std::size_t i, std::size_t generation) {
    node_config c;
    c.transport.node_id = "n" + std::to_string(i) + (generation ? "." + std::to_string(generation) : "");
    const auto k = seed * 131 + i * 17 + generation;
    c.membership.seed = k * 1'000'003 + 1;
    c.broadcast.seed = k * 2'000'003 + 1;
    c.replicas.seed = k * 3'000'017 + 1;
    c.clocks.seed = k * 4'000'037 + 1;
    c.data_dir = dir / ("n" + std::to_string(i));
    // Small bounds, so that the budget check below watches eviction at work
    // rather than limits a 60 s run never nears.
    c.broadcast.cache_max_messages = 2'000;
    c.broadcast.cache_max_bytes = 256 * 1024;
    c.broadcast.max_missing = 2'000;
    // Contacts: up to three nodes that are up, as a deployment lists a few
    // seeds (one contact that later crashes would leave a node that is cut
    // off meanwhile nobody to rejoin through: its address is new).
    for (std::size_t j = 0; j < nodes.size() && c.contacts.size() < 3; ++j)
      if (j != i && nodes[j] && !down.contains(j)) c.contacts.push_back(nodes[j]->self().address);
    c.log = [this, i](const std::string& line) {
      // An exception that escaped a handler or a callback is a bug the
      // nemesis reports, whatever else held.
      if (line.find(" threw") != std::string::npos) escaped.push_back("n" + std::to_string(i) + ": " + line);
      if (options.trace) std::cout << "  [" << net.now().count() << " ms]   " << line << '\n';
    };
    auto made = std::make_unique<node>(net, c);
    const auto me = made->id();
    made->broadcast().subscribe("nemesis.custom", [this, me](const plumtree::delivery& d) {
      const auto k = cbor_reader(d.payload.bytes()).uint();
      if (!k || *k >= broadcasts_sent) {
        if (broadcast_faults.size() < 10) broadcast_faults.push_back(me + " got a broadcast nobody sent");
      } else if (!broadcasts_seen[me].insert(*k).second && broadcast_faults.size() < 10) {
        broadcast_faults.push_back(me + " got broadcast " + std::to_string(*k) + " twice");
      }
    });
    return made;
  }

  static sim_config config_for(std::uint64_t seed) {
    sim_config c;
    c.seed = seed;
    return c;
  }

  void note(const std::string& what) {
    if (options.trace) std::cout << "  [" << net.now().count() << " ms] " << what << '\n';
  }

  std::uint64_t seed;
  std::filesystem::path dir;
  boost::asio::io_context io;
  sim_network net;
  std::unique_ptr<scheduler> clock;  // the workload's and nemesis's timers (no node's: nodes crash)
  random_engine rng;        // the workload's
  random_engine fault_rng;  // the schedule's alone
  nemesis_options options;
  std::vector<std::unique_ptr<node>> nodes;
  std::vector<std::shared_ptr<map>> maps;
  std::vector<std::size_t> incarnation;
  std::vector<operation> ops;
  std::vector<std::string> escaped;
  std::vector<std::string> faults_done;
  std::size_t faults_drawn = 0;
  std::vector<std::size_t> removable;  // ops: acked puts of unique keys not yet removed
  std::uint64_t next_key = 0;
  bool writing = true;
  std::size_t clients = 0;
  bool partitioned = false;
  bool lossy = false;
  bool duplicating = false;
  bool slow = false;
  std::set<std::size_t> frozen;
  std::set<std::size_t> down;  // crashed, not restarted yet
  std::map<std::size_t, duration> skewed;
  std::vector<disk_state> disks;  // by slot: a restarted node keeps its disk
  std::set<std::size_t> faulty_disks;
  std::set<std::size_t> slowed;
  std::vector<std::shared_ptr<elections>> votes;
  std::vector<term> terms;
  std::vector<std::string> over_budget;  // memory bounds seen broken while the run went on
  // Custom broadcasts (Plumtree, tag "nemesis.custom"): best effort, so no
  // promise that each reaches everyone; but none twice, none made up.
  std::uint64_t broadcasts_sent = 0;
  std::map<std::string, std::set<std::uint64_t>> broadcasts_seen;  // node id -> numbers
  std::vector<std::string> broadcast_faults;
  bool sabotage = false;
};

// The store's disk: healthy, full (writes fail with ENOSPC and are cut
// back), failing fsyncs (the store stops taking writes until a restart),
// or tearing the next write (half of it lands, then EIO).
map_options persisted(world& w, std::size_t slot) {
  map_options o;
  o.persist = true;
  o.disk_faults = [&w, slot](disk_op op, std::size_t& bytes) -> int {
    switch (w.disks[slot]) {
      case disk_state::healthy: return 0;
      case disk_state::full: return op == disk_op::write ? ENOSPC : 0;
      case disk_state::fsync_fails: return op == disk_op::fsync ? EIO : 0;
      case disk_state::torn_write:
        if (op != disk_op::write) return 0;
        bytes /= 2;
        w.disks[slot] = disk_state::healthy;  // once
        return EIO;
    }
    return 0;
  };
  return o;
}

// Starts `t` on the timeline; an exception it ends with is a violation
// (detached would swallow it, and a seed could pass with a nemesis that
// stopped early).
void spawn(world& w, task<> t, std::string what) {
  boost::asio::co_spawn(w.io, std::move(t), [&w, what = std::move(what)](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      w.escaped.push_back(what + " threw: " + x.what());
    } catch (...) {
      w.escaped.push_back(what + " threw");
    }
  });
}

std::size_t pick(random_engine& rng, std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); }

duration between(random_engine& rng, duration lo, duration hi) {
  return duration{std::uniform_int_distribution<duration::rep>(lo.count(), hi.count())(rng)};
}

// ---- the workload ---------------------------------------------------------------------

std::size_t find_put(const world& w, const std::string& key) {
  for (std::size_t i = 0; i < w.ops.size(); ++i)
    if (w.ops[i].key == key && w.ops[i].what == operation::kind::put) return i;
  return 0;
}

// One client: a put of a fresh key, a put of one of five contended keys, or
// the removal of a key whose put was acknowledged, on a random node (frozen
// or cut off included: its writes must survive too).
task<> client(world& w, std::size_t id) {
  ++w.clients;
  while (w.writing) {
    const bool slept = co_await w.clock->sleep(between(w.rng, 20ms, 200ms));
    if (!slept || !w.writing) break;
    operation op;
    op.node = pick(w.rng, w.nodes.size());
    const auto roll = pick(w.rng, 100);
    if (roll < 20 && !w.removable.empty()) {
      // Removed where the put was acknowledged: that node has seen the put,
      // so its tombstone is stamped later and must win everywhere. (On a
      // node that has not seen it, a slower clock may legally lose to it:
      // last writer wins by timestamp.)
      const auto which = pick(w.rng, w.removable.size());
      op.what = operation::kind::remove;
      op.key = w.ops[w.removable[which]].key;
      op.node = w.ops[w.removable[which]].node;
      w.removable.erase(w.removable.begin() + static_cast<std::ptrdiff_t>(which));
    } else {
      op.key = roll < 40 ? "contended-" + std::to_string(pick(w.rng, 5)) : "key-" + std::to_string(w.next_key++);
      op.value = static_cast<int>(id * 1'000'000 + w.ops.size());
    }
    if (roll >= 95 && op.what == operation::kind::put && op.key.starts_with("key-") && !w.down.contains(op.node)) {
      // Now and then a custom broadcast instead (its key number is unused).
      w.nodes[op.node]->broadcast().broadcast("nemesis.custom", share_bytes(cbor_writer().uint(w.broadcasts_sent++).take()));
      continue;
    }
    if (w.down.contains(op.node)) {  // a crashed node takes no requests
      if (op.what == operation::kind::remove) w.removable.push_back(find_put(w, op.key));  // still to remove
      continue;
    }
    op.started = w.net.now();
    const auto index = w.ops.size();
    w.ops.push_back(op);
    std::string error;
    auto m = w.maps[op.node];  // kept alive through a crash of its node: the call then fails cleanly
    try {
      if (op.what == operation::kind::put) co_await m->put(op.key, json(op.value));
      else co_await m->remove(op.key);
    } catch (const std::exception& e) {
      error = e.what();
    }
    auto& done = w.ops[index];
    done.finished = true;
    done.acked = error.empty();
    done.error = error;
    if (done.acked && done.what == operation::kind::put && done.key.starts_with("key-")) w.removable.push_back(index);
    w.note(std::string(done.what == operation::kind::put ? "put " : "remove ") + done.key + " on n" +
           std::to_string(done.node) + (done.acked ? " acked" : " refused: " + error));
  }
  --w.clients;
}

// ---- the nemesis ----------------------------------------------------------------------

// Every node campaigns for "lead" and records each term it takes.
// The campaign lives here: when its node goes, its stream ends (and the
// campaign is withdrawn on a node that is gone: nothing to do).
task<> follow_campaign(world& w, std::string node_id, std::shared_ptr<campaign> c) {
  while (auto ev = co_await c->next()) {
    if (ev->what != leadership_event::kind::elected) continue;
    w.terms.push_back(term{node_id, ev->fence, w.net.now()});
    w.note(node_id + " leads, fence " + std::to_string(ev->fence));
  }
}

task<> campaign_on(world& w, std::size_t i) {
  auto* n = w.nodes[i].get();
  const auto incarnation = w.incarnation[i];  // not the pointer: a new node may reuse the address
  w.votes[i] = elections::open(*n);
  campaign_options o;
  o.priority = static_cast<std::int64_t>(pick(w.rng, 3));  // ties go to the lowest id
  std::unique_ptr<campaign> c;
  std::string refused;
  try {
    c = co_await w.votes[i]->lead("lead", o);
  } catch (const std::exception& e) {
    refused = e.what();  // clock_skew_error while this clock is ahead: no campaign this time
  }
  if (!c || w.incarnation[i] != incarnation || w.down.contains(i)) co_return;
  if (c->initial_fence()) {
    w.terms.push_back(term{n->id(), *c->initial_fence(), w.net.now()});
    w.note(n->id() + " leads, fence " + std::to_string(*c->initial_fence()));
  }
  co_await follow_campaign(w, n->id(), std::shared_ptr<campaign>(std::move(c)));
}

task<> start_one(world& w, std::size_t i) {
  auto* n = w.nodes[i].get();
  const auto incarnation = w.incarnation[i];
  co_await n->start();
  if (w.incarnation[i] == incarnation && !w.down.contains(i)) co_await campaign_on(w, i);
}

void crash(world& w, std::size_t i) {
  w.note("crash " + w.nodes[i]->id());
  w.net.kill(w.nodes[i]->id());
  w.votes[i].reset();
  w.maps[i].reset();
  w.nodes[i].reset();
  w.down.insert(i);
}

void restart(world& w, std::size_t i) {
  w.nodes[i] = w.make_node(i, ++w.incarnation[i]);
  w.maps[i] = map::open(*w.nodes[i], "nemesis", persisted(w, i));
  w.down.erase(i);
  w.note("restart " + w.nodes[i]->id() + " from disk, " + std::to_string(w.maps[i]->size()) + " keys");
  spawn(w, start_one(w, i), "the restart of " + w.nodes[i]->id());
}

// Applies one fault now; returns how to undo it, or nothing when it does not
// apply (a partition while one is on).
std::function<void()> apply(world& w, const fault_draw& d) {
  const auto f = d.what;
  const auto n = w.nodes.size();
  auto id = [&](std::size_t i) { return w.nodes[i]->id(); };
  switch (f) {
    case fault::split_halves:
    case fault::isolate_one:
    case fault::one_way: {
      if (w.partitioned) return {};
      std::set<std::string> a, b;
      std::vector<std::size_t> order(n);
      for (std::size_t i = 0; i < n; ++i) order[i] = i;
      random_engine sides(d.shuffle);
      std::shuffle(order.begin(), order.end(), sides);
      const std::size_t cut = f == fault::split_halves ? n / 2 : 1;
      std::erase_if(order, [&](std::size_t i) { return w.down.contains(i); });
      if (order.size() < 2) return {};
      for (std::size_t k = 0; k < order.size(); ++k) (k < cut ? a : b).insert(id(order[k]));
      w.net.partition(a, b, f == fault::one_way);
      w.partitioned = true;
      w.note(std::string(f == fault::one_way ? "one-way partition from " : "partition ") + std::to_string(a.size()) +
             " | " + std::to_string(b.size()) + " (first side has " + *a.begin() + ")");
      return [&w] {
        w.net.heal();
        w.partitioned = false;
        w.note("heal");
      };
    }
    case fault::freeze_node: {
      const auto i = d.node % n;
      if (w.frozen.contains(i) || w.down.contains(i)) return {};
      w.net.kill(id(i));
      w.frozen.insert(i);
      w.note("freeze " + id(i));
      return [&w, i] {
        w.net.revive(w.nodes[i]->id());
        w.frozen.erase(i);
        w.note("thaw " + w.nodes[i]->id());
      };
    }
    case fault::crash_restart: {
      const auto i = d.node % n;
      if (w.frozen.contains(i) || w.skewed.contains(i) || w.down.contains(i) || w.down.size() + 1 >= n) return {};
      // A crash: the node goes without stopping (no leave, no flush beyond
      // what its store does when destroyed: acknowledged writes are on disk
      // already). It comes back later from its data directory.
      crash(w, i);
      return [&w, i] { restart(w, i); };
    }
    case fault::disk_full:
    case fault::fsync_fails:
    case fault::torn_write: {
      const auto i = d.node % n;
      if (w.faulty_disks.contains(i) || w.down.contains(i)) return {};
      w.disks[i] = f == fault::disk_full     ? disk_state::full
                   : f == fault::fsync_fails ? disk_state::fsync_fails
                                             : disk_state::torn_write;
      w.faulty_disks.insert(i);
      w.note(std::string("disk of ") + id(i) + ": " + fault_names[static_cast<std::size_t>(f)]);
      // A store whose fsync failed takes no more writes: the operator's
      // remedy is a restart, once the disk is fixed.
      const bool restart_after = f == fault::fsync_fails;
      return [&w, i, restart_after] {
        w.disks[i] = disk_state::healthy;
        w.faulty_disks.erase(i);
        w.note("disk of slot n" + std::to_string(i) + " healthy");  // its node may be down meanwhile
        if (restart_after && !w.down.contains(i) && !w.frozen.contains(i) && !w.skewed.contains(i)) {
          w.note("restart " + w.nodes[i]->id() + " after its failed fsync");
          crash(w, i);
          restart(w, i);
        }
      };
    }
    case fault::duplicate_spike: {
      if (w.duplicating) return {};
      w.duplicating = true;
      const double share = 0.05 + 0.25 * d.amount;
      w.net.set_duplicate(share);
      w.note("duplicates " + std::to_string(share));
      return [&w] {
        w.net.set_duplicate(0);
        w.duplicating = false;
        w.note("duplicates 0");
      };
    }
    case fault::delay_spike: {
      // Below the failure detection (3 s): slow links, not dead ones; the
      // jitter reorders messages on a link.
      if (w.slow) return {};
      w.slow = true;
      const auto latency = duration{50 + static_cast<duration::rep>(d.amount * 750)};
      w.net.set_latency(latency, latency / 2);
      w.note("latency " + ms(latency) + " +- " + ms(latency / 2));
      return [&w, base = w.net.config().latency, jitter = w.net.config().jitter] {
        w.net.set_latency(base, jitter);
        w.slow = false;
        w.note("latency back");
      };
    }
    case fault::slow_node: {
      // One host slow (up to 1.5 s each way, below the failure detection):
      // its peers' sends to it and its own go late, in order or not.
      const auto i = d.node % n;
      if (w.slowed.contains(i) || w.down.contains(i) || w.frozen.contains(i)) return {};
      const auto extra = duration{100 + static_cast<duration::rep>(d.amount * 1400)};
      w.net.set_node_delay(id(i), extra);
      w.slowed.insert(i);
      w.note(id(i) + " slow by " + ms(extra));
      return [&w, i] {
        if (w.nodes[i]) w.net.set_node_delay(w.nodes[i]->id(), duration{0});
        w.slowed.erase(i);
        w.note("slot n" + std::to_string(i) + " fast again");
      };
    }
    case fault::loss_spike: {
      if (w.lossy) return {};
      w.lossy = true;
      const double loss = 0.05 + 0.25 * d.amount;
      w.net.set_loss(loss);
      w.note("loss " + std::to_string(loss));
      return [&w] {
        w.net.set_loss(0);
        w.lossy = false;
        w.note("loss 0");
      };
    }
    case fault::clock_ahead:
    case fault::clock_behind: {
      const auto i = d.node % n;
      if (w.skewed.contains(i) || w.down.contains(i)) return {};
      // Up to two minutes: past the 60 s maximum offset half of the time.
      auto skew = duration{1'000 + static_cast<duration::rep>(d.amount * 119'000)};
      if (f == fault::clock_behind) skew = -skew;
      w.net.set_wall_skew(id(i), skew);
      w.skewed[i] = skew;
      w.note("clock of " + id(i) + " off by " + ms(skew));
      return [&w, i] {
        w.net.set_wall_skew(w.nodes[i]->id(), duration{0});
        w.skewed.erase(i);
        w.note("clock of " + w.nodes[i]->id() + " back");
      };
    }
  }
  return {};
}

// Every second: each live node's broadcast cache and its table of announced
// but missing messages stay within their configured bounds.
task<> watch_budgets(world& w) {
  while (w.writing) {
    const bool slept = co_await w.clock->sleep(1s);
    if (!slept) break;
    for (auto& n : w.nodes) {
      if (!n) continue;
      const auto& b = n->broadcast().counters();
      const auto& c = n->config().broadcast;
      if ((b.cache_bytes > c.cache_max_bytes || b.cache_size > c.cache_max_messages || b.missing > c.max_missing) &&
          w.over_budget.size() < 10)
        w.over_budget.push_back(n->id() + " at " + ms(w.net.now()) + ": cache " + std::to_string(b.cache_bytes) +
                                " bytes in " + std::to_string(b.cache_size) + " messages, " +
                                std::to_string(b.missing) + " missing");
    }
  }
}

task<> undo_after(world& w, duration after, std::function<void()> undo) {
  const bool slept = co_await w.clock->sleep(after);
  if (slept && w.writing) undo();  // at the end, the final heal undoes everything at once
}

fault_draw draw(world& w) {
  auto& r = w.fault_rng;
  fault_draw d;
  d.gap = between(r, 500ms, 5s);
  d.what = static_cast<fault>(pick(r, fault_kinds));
  d.node = pick(r, w.nodes.size());
  d.amount = std::uniform_real_distribution<double>(0, 1)(r);
  d.length = between(r, 1s, 15s);
  d.shuffle = r();
  return d;
}

task<> nemesis(world& w) {
  for (std::size_t k = 0; w.writing; ++k) {
    const auto d = draw(w);
    const bool slept = co_await w.clock->sleep(d.gap);
    if (!slept || !w.writing) break;
    w.faults_drawn = k + 1;
    if (w.options.skip_faults.contains(k)) continue;
    auto undo = apply(w, d);
    if (!undo) continue;
    w.faults_done.push_back(std::to_string(k) + ":" + fault_names[static_cast<std::size_t>(d.what)]);
    spawn(w, undo_after(w, d.length, std::move(undo)), "an undo");
  }
}

// ---- the invariants -------------------------------------------------------------------

struct verdict {
  std::vector<std::string> violations;
  bool converged = false;
  std::size_t fence_collisions = 0;
};

// Which replicas hold `key` now (for a violation's message).
std::string holders(const world& w, const std::string& key) {
  std::string out;
  for (std::size_t i = 0; i < w.maps.size(); ++i)
    if (w.maps[i]->get(key)) out += (out.empty() ? "" : ",") + w.nodes[i]->id();
  return " (held by: " + (out.empty() ? std::string("none") : out) + ")";
}

// What every replica must hold, from the acknowledged operations.
verdict check(world& w) {
  verdict v;
  // 1. Every replica equal.
  const auto reference = w.maps[0]->keys();
  bool equal = true;
  for (std::size_t i = 1; i < w.maps.size() && equal; ++i) {
    if (w.maps[i]->keys() != reference) equal = false;
    for (const auto& k : reference)
      if (equal && w.maps[i]->get(k) != w.maps[0]->get(k)) equal = false;
  }
  if (!equal) {
    std::string views;  // who is connected to whom, to tell a sync bug from a split overlay
    for (auto& n : w.nodes) {
      std::string ids;
      for (const auto& p : n->membership().active_view()) ids += (ids.empty() ? "" : ",") + p.id;
      views += " " + n->id() + ":[" + ids + "]";
    }
    v.violations.push_back("replicas differ; active views" + views);
  }
  // 2. Nothing acknowledged is lost, nothing removed comes back.
  std::map<std::string, std::vector<const operation*>> by_key;
  for (const auto& op : w.ops) by_key[op.key].push_back(&op);
  for (const auto& [key, list] : by_key) {
    const auto now = w.maps[0]->get(key);
    if (key.starts_with("key-")) {
      const operation* put = nullptr;
      const operation* removal = nullptr;
      for (const auto* op : list) (op->what == operation::kind::put ? put : removal) = op;
      if (removal && removal->acked && now)
        v.violations.push_back(key + ": removed (acknowledged on n" + std::to_string(removal->node) + " at " +
                               ms(removal->started) + ") but present" + holders(w, key));
      else if (put && put->acked && !removal && now != json(put->value))
        v.violations.push_back(key + ": put acknowledged on n" + std::to_string(put->node) + " at " + ms(put->started) +
                               " but " + (now ? "holds " + now->dump() : std::string("absent")) + holders(w, key));
    } else {
      // Contended: the value of some put to it, present once one was acknowledged.
      bool any_acked = false, known = !now;
      for (const auto* op : list) {
        any_acked = any_acked || op->acked;
        known = known || (now && *now == json(op->value));
      }
      if (!known) v.violations.push_back(key + ": holds " + now->dump() + ", which nobody wrote");
      if (any_acked && !now) v.violations.push_back(key + ": acknowledged puts, but absent");
    }
  }
  // 3. Fencing: no token held by two leaders; each node's tokens rise.
  std::map<std::uint64_t, std::string> holder;
  std::map<std::string, std::uint64_t> last_fence;
  for (const auto& t : w.terms) {
    // Two nodes that each believe they lead (before their candidate sets
    // converge, or across a partition) mint in the same millisecond: their
    // tokens still differ (the minting node's bits are in each).
    if (auto [it, fresh] = holder.emplace(t.fence, t.node); !fresh && it->second != t.node) {
      ++v.fence_collisions;
      v.violations.push_back("fence " + std::to_string(t.fence) + " held by " + it->second + " and " + t.node);
    }
    if (auto it = last_fence.find(t.node); it != last_fence.end() && t.fence <= it->second)
      v.violations.push_back(t.node + " took fence " + std::to_string(t.fence) + " at " + ms(t.at) + " after " +
                             std::to_string(it->second));
    last_fence[t.node] = t.fence;
  }
  for (const auto& b : w.over_budget) v.violations.push_back("over its memory bounds: " + b);
  for (const auto& b : w.broadcast_faults) v.violations.push_back("broadcast: " + b);
  if (!w.escaped.empty()) v.violations.push_back("exception escaped: " + w.escaped.front());
  v.converged = v.violations.empty();
  return v;
}

// The checker's own test (--sabotage): one replica drops a key whose put
// was acknowledged, as a bug would; the removal spreads, so the replicas
// agree and only the acknowledged-write invariant can catch it.
void sabotage(world& w) {
  for (const auto& op : w.ops) {
    if (!op.acked || op.what != operation::kind::put || !op.key.starts_with("key-")) continue;
    bool removed = false;
    for (const auto& other : w.ops) removed = removed || (other.key == op.key && other.what == operation::kind::remove);
    if (removed) continue;
    w.note("sabotage: n0 removes " + op.key + " behind the workload's back");
    spawn(w, w.maps[0]->remove(op.key), "the sabotage");
    return;
  }
}

// Coroutine functions, not capturing lambdas (GCC 12).
task<> start_all(world& w, std::size_t& started) {
  for (auto& n : w.nodes) {
    co_await n->start();
    ++started;
  }
}

task<> stop_all(world& w) {
  for (auto& n : w.nodes) co_await n->stop();
}

// A task group without an error sink reports a loop that threw on standard
// error ("barrel_p2p: task '...' failed"): captured for the run.
struct stderr_capture {
  std::ostringstream text;
  std::streambuf* old = std::cerr.rdbuf(text.rdbuf());
  ~stderr_capture() { std::cerr.rdbuf(old); }
};

struct seed_result {
  bool held = false;
  std::size_t faults_drawn = 0;
  std::vector<std::string> violations;
};

seed_result run_seed(std::uint64_t seed, const nemesis_options& o, bool quiet = false) {
  stderr_capture errors;
  world w(seed, o);
  // Form the cluster: the nodes start one after the other, each through up
  // to three that started before it.
  std::size_t started = 0;
  spawn(w, start_all(w, started), "the start");
  w.net.run_until([&] { return started == w.nodes.size(); }, 60s);
  for (std::size_t i = 0; i < w.nodes.size(); ++i) spawn(w, campaign_on(w, i), "a campaign");
  for (std::size_t i = 0; i < w.nodes.size(); ++i) w.maps.push_back(map::open(*w.nodes[i], "nemesis", persisted(w, i)));
  w.net.run_for(5s);

  for (std::size_t c = 0; c < 3; ++c) spawn(w, client(w, c), "a client");
  spawn(w, nemesis(w), "the nemesis");
  spawn(w, watch_budgets(w), "the budget watch");
  w.net.run_for(o.faulty);
  w.writing = false;
  w.net.run_until([&] { return w.clients == 0; }, 30s);
  // The final heal: every fault undone at once.
  w.net.heal();
  w.net.set_loss(0);
  w.net.set_duplicate(0);
  w.net.set_latency(sim_config{}.latency, sim_config{}.jitter);
  for (auto i : w.slowed)
    if (w.nodes[i]) w.net.set_node_delay(w.nodes[i]->id(), duration{0});
  w.slowed.clear();
  for (auto i : w.frozen) w.net.revive(w.nodes[i]->id());
  for (auto& [i, skew] : w.skewed) w.net.set_wall_skew(w.nodes[i]->id(), duration{0});
  w.frozen.clear();
  w.skewed.clear();
  // Disks healthy again; a node whose fsync failed takes no writes until it
  // restarts, so it restarts (after the crashed ones come back).
  std::set<std::size_t> fsync_failed;
  for (auto i : w.faulty_disks)
    if (w.disks[i] == disk_state::fsync_fails && !w.down.contains(i)) fsync_failed.insert(i);
  for (auto& d : w.disks) d = disk_state::healthy;
  w.faulty_disks.clear();
  for (auto i : fsync_failed) crash(w, i);
  const auto crashed = w.down;
  for (auto i : crashed) restart(w, i);
  w.note("final heal");
  if (o.sabotage) sabotage(w);
  const auto healed = w.net.now();
  verdict v;
  auto failed_loops = [&] {
    const auto all = errors.text.str();
    const auto at = all.find("barrel_p2p: task '");
    if (at == std::string::npos) return;
    auto line = all.substr(at, all.find('\n', at) - at);
    if (std::find(w.escaped.begin(), w.escaped.end(), line) == w.escaped.end() && w.escaped.size() < 10)
      w.escaped.push_back(std::move(line));
  };
  while (w.net.now() - healed < o.quiet) {
    w.net.run_for(1s);
    failed_loops();
    v = check(w);
    if (v.converged) break;
  }
  const auto took = w.net.now() - healed;
  std::size_t acked = 0, refused = 0;
  for (const auto& op : w.ops) (op.acked ? acked : refused) += op.finished ? 1 : 0;
  json line = json::object();
  line["scenario"] = "nemesis";
  line["seed"] = seed;
  line["nodes"] = o.nodes;
  line["faults"] = w.faults_done;
  line["operations"] = w.ops.size();
  line["acknowledged"] = acked;
  line["refused"] = refused;
  line["terms"] = w.terms.size();
  line["broadcasts"] = w.broadcasts_sent;
  line["fence_collisions"] = v.fence_collisions;
  line["converged"] = v.converged;
  line["settle_ms"] = took.count();
  line["violations"] = v.violations.size() > 10 ? std::vector<std::string>(v.violations.begin(), v.violations.begin() + 10)
                                                : v.violations;
  if (!quiet) std::cout << line.dump() << std::endl;
  // The nodes stop inside the timeline, as they would in a real shutdown.
  boost::asio::co_spawn(w.io, stop_all(w), boost::asio::detached);
  w.net.run_for(30s);
  return seed_result{v.converged, w.faults_drawn, v.violations};
}

std::string joined(const std::set<std::size_t>& xs) {
  std::string out;
  for (auto x : xs) out += (out.empty() ? "" : ",") + std::to_string(x);
  return out;
}

// Greedy shrinking: drop each drawn fault in turn and keep it dropped when
// the seed still fails; what is left is a schedule whose every fault is
// needed for this failure. Each try is a whole run of the seed.
void shrink(std::uint64_t seed, const nemesis_options& o, std::size_t drawn) {
  auto trial = o;
  trial.trace = false;
  std::size_t runs = 0;
  for (std::size_t k = 0; k < drawn; ++k) {
    if (trial.skip_faults.contains(k)) continue;
    trial.skip_faults.insert(k);
    ++runs;
    if (run_seed(seed, trial, true).held) trial.skip_faults.erase(k);  // needed: keep it
  }
  std::set<std::size_t> kept;
  for (std::size_t k = 0; k < drawn; ++k)
    if (!trial.skip_faults.contains(k)) kept.insert(k);
  const auto last = run_seed(seed, trial, true);
  std::cout << "  shrunk seed " << seed << " in " << runs << " runs: " << kept.size() << " of " << drawn
            << " faults needed (" << joined(kept) << "); "
            << (last.violations.empty() ? std::string("it no longer fails") : last.violations.front()) << "\n"
            << "  replay: barrel-p2p-sim --scenario nemesis --seeds " << seed << " --nodes " << o.nodes
            << " --fault-seconds " << o.faulty.count() / 1000 << (o.sabotage ? " --sabotage" : "")
            << (trial.skip_faults.empty() ? std::string() : " --skip-faults " + joined(trial.skip_faults)) << " --trace\n";
}

}  // namespace

int run_nemesis(const nemesis_options& o) {
  std::vector<std::uint64_t> failed;
  for (auto seed = o.first_seed; seed <= o.last_seed; ++seed) {
    const auto r = run_seed(seed, o);
    if (r.held) continue;
    failed.push_back(seed);
    if (o.shrink) shrink(seed, o, r.faults_drawn);
  }
  const auto total = o.last_seed - o.first_seed + 1;
  std::cout << "\nnemesis: " << total << " seeds, " << o.nodes << " nodes, " << o.faulty.count() / 1000
            << " s of faults each: " << (total - failed.size()) << " held every invariant";
  if (!failed.empty()) {
    std::cout << ", " << failed.size() << " failed:";
    for (auto s : failed) std::cout << ' ' << s;
    std::cout << "\n  replay one with: barrel-p2p-sim --scenario nemesis --seeds " << failed.front() << " --nodes "
              << o.nodes << " --fault-seconds " << o.faulty.count() / 1000 << (o.sabotage ? " --sabotage" : "")
              << (o.skip_faults.empty() ? std::string() : " --skip-faults " + joined(o.skip_faults)) << " --trace";
  }
  std::cout << '\n';
  return failed.empty() ? 0 : 1;
}

}  // namespace barrel_p2p::sim
