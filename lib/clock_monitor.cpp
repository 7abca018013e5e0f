#include "barrel_p2p/clock_monitor.hpp"
#include "barrel_p2p/log.hpp"

#include "barrel_p2p/detail/clock_messages.hpp"
#include "barrel_p2p/detail/task_group.hpp"
#include "log_limiter.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>

namespace barrel_p2p {

const char* to_string(clock_skew_policy p) noexcept {
  return p == clock_skew_policy::refuse ? "refuse" : "warn";
}

std::optional<clock_skew_policy> clock_skew_policy_from_string(std::string_view s) noexcept {
  if (s == "refuse") return clock_skew_policy::refuse;
  if (s == "warn") return clock_skew_policy::warn;
  return std::nullopt;
}

clock_sample measure_offset(std::uint64_t peer_wall_ms, std::uint64_t local_wall_ms,
                            duration round_trip) noexcept {
  // Both readings fit in 44 bits (the parser and the HLC see to it), so the
  // signed difference cannot overflow.
  const auto peer_at_receipt = static_cast<std::int64_t>(peer_wall_ms) + round_trip.count() / 2;
  return {duration{peer_at_receipt - static_cast<std::int64_t>(local_wall_ms)}, round_trip};
}

void clock_filter::add(clock_sample s) {
  samples_.push_back(s);
  if (samples_.size() > capacity_) samples_.pop_front();
  // Kept, not searched on every read: every local write reads it.
  best_.reset();
  for (const auto& x : samples_)
    if (!best_ || x.round_trip <= best_->round_trip) best_ = x;
}

clock_verdict judge_offsets(std::span<const duration> offsets, duration max_offset, duration stamp_lead) {
  clock_verdict v;
  v.stamp_lead = stamp_lead;
  if (offsets.empty()) return v;
  for (const auto o : offsets) v.count(o, max_offset);
  std::vector<duration> sorted(offsets.begin(), offsets.end());
  std::sort(sorted.begin(), sorted.end());
  const auto n = sorted.size();
  v.median_offset = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  return v;
}

namespace {

std::string format_seconds(duration d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.3f s", to_seconds(d));
  return buf;
}

// Probes awaiting an answer, per peer: enough for answers slower than the
// probe interval, few enough that a peer cannot make us remember much.
constexpr std::size_t max_outstanding_probes = 4;

}  // namespace

struct clock_monitor::impl {
  transport& net;
  hyparview& membership;
  scheduler& sched;
  const hlc_clock& clock;
  duration max_offset;
  clock_monitor_config config;
  logger log{config.log, net.self().id, "clock"};
  task_group loops;
  random_engine rng;
  clock_monitor_counters counters;
  bool started = false;
  bool stopped = false;

  struct peer_state {
    clock_filter filter;
    std::deque<std::uint64_t> outstanding;  // sent_ms of probes not answered yet
    detail::log_limiter warn_log;           // one warning per warn_interval
  };
  std::map<std::string, peer_state> peers;  // the active view's peers
  // The last verdict with a measured peer: it stands while none is left.
  bool ahead = false;
  bool behind = false;
  duration lead_over_median{0};

  impl(transport& n, hyparview& m, scheduler& s, const hlc_clock& h, clock_monitor_config c)
      : net(n), membership(m), sched(s), clock(h), max_offset(h.max_offset()), config(std::move(c)),
        loops(s.get_executor()) {
    if (config.probe_interval <= duration{0}) throw std::invalid_argument("clock_monitor: probe_interval must be positive");
    rng.seed(config.seed ? config.seed : std::random_device{}());
  }

  void probe(const std::string& peer_id, peer_state& p) {
    const auto sent = static_cast<std::uint64_t>(sched.now().count());
    if (!net.send(peer_id, channel::clock, encode(clock_probe{sent}))) return;
    ++counters.probes_sent;
    p.outstanding.push_back(sent);
    if (p.outstanding.size() > max_outstanding_probes) p.outstanding.pop_front();
  }

  bool on_message(const std::string& from, const byte_slice& body) {
    auto m = parse_clock_message(body.bytes());
    if (!m) {
      ++counters.bad_messages;
      return true;  // CBOR or not, a wrong shape is dropped and the link kept
    }
    if (const auto* p = std::get_if<clock_probe>(&*m)) {
      // Anyone connected may ask: an answer is a few bytes and keeps no state.
      net.send(from, channel::clock, encode(clock_answer{p->sent_ms, sched.wall_ms()}));
      return true;
    }
    on_answer(from, std::get<clock_answer>(*m));
    return true;
  }

  void on_answer(const std::string& from, const clock_answer& a) {
    auto it = peers.find(from);
    if (it == peers.end()) {
      ++counters.unexpected_answers;
      return;
    }
    auto& p = it->second;
    // Only an answer to a probe we sent and that is still outstanding: a
    // peer cannot invent round trips, and a repeated answer counts once.
    auto sent = std::find(p.outstanding.begin(), p.outstanding.end(), a.sent_ms);
    if (sent == p.outstanding.end()) {
      ++counters.unexpected_answers;
      return;
    }
    p.outstanding.erase(sent);
    ++counters.answers_received;
    const auto rtt = sched.now() - duration{static_cast<std::int64_t>(a.sent_ms)};
    p.filter.add(measure_offset(a.wall_ms, sched.wall_ms(), std::max(rtt, duration{0})));
    warn_if_far(from, p);
    reconsider();
  }

  void warn_if_far(const std::string& peer_id, peer_state& p) {
    const auto best = p.filter.best();
    if (!best || std::abs(best->offset.count()) * 2 <= max_offset.count()) return;
    if (!p.warn_log.allow(sched.now(), config.warn_interval)) return;
    ++counters.warnings;
    log("peer " + peer_id + "'s wall clock is " + format_seconds(best->offset) + " from ours (round trip " +
        std::to_string(best->round_trip.count()) + " ms); timestamps more than " + format_seconds(max_offset) +
        " ahead of a node's clock are refused by it");
  }

  // How far the next timestamp runs ahead of the wall clock: the HLC keeps
  // the greatest time it issued or absorbed, and never steps back.
  duration stamp_lead() const {
    const auto wall = sched.wall_ms();
    const auto last = clock.last().wall_ms;
    return duration{last > wall ? static_cast<std::int64_t>(last - wall) : 0};
  }

  // Each peer's clock against the timestamp the next write would carry.
  clock_verdict verdict() const {
    std::vector<duration> offsets;
    offsets.reserve(peers.size());
    for (const auto& [id, p] : peers)
      if (auto b = p.filter.best()) offsets.push_back(b->offset);
    return judge_offsets(offsets, max_offset, stamp_lead());
  }

  // verdict().ahead_of_cluster() without the median (no sorting, no
  // allocation): every local write asks.
  bool ahead_now() const {
    clock_verdict v;
    v.stamp_lead = stamp_lead();
    for (const auto& [id, p] : peers)
      if (const auto& b = p.filter.best()) v.count(b->offset, max_offset);
    return v.measured ? v.ahead_of_cluster() : ahead;
  }

  // Logs the verdict's transitions, and returns the verdict. With no
  // measured peer left (all gone), the last verdict stands: there is no
  // evidence the clock came back.
  clock_verdict reconsider() {
    const auto v = verdict();
    if (v.measured == 0) return v;
    lead_over_median = v.lead_over_median();
    auto summary = std::to_string(v.measured) + " measured active peers (median offset " +
                   format_seconds(v.median_offset) + ", maximum offset " + format_seconds(max_offset);
    if (v.stamp_lead > duration{0})
      summary += ", this node's HLC " + format_seconds(v.stamp_lead) + " ahead of its wall clock";
    summary += ")";
    if (v.ahead_of_cluster() != ahead) {
      ahead = v.ahead_of_cluster();
      if (ahead)
        log("this node's timestamps are too far ahead for " + std::to_string(v.behind) + " of " + summary +
            (config.policy == clock_skew_policy::refuse
                 ? ": refusing local writes until they are back in range (policy refuse)"
                 : ": those peers will drop its writes (policy warn: writes still accepted)"));
      else
        log("this node's timestamps are back in range for " + summary +
            (config.policy == clock_skew_policy::refuse ? ": accepting local writes again" : ""));
    }
    if (v.behind_cluster() != behind) {
      behind = v.behind_cluster();
      if (behind)
        log("this node's wall clock is behind " + std::to_string(v.ahead) + " of " + summary +
            ": their writes are refused here until this clock catches up; fix its time source");
      else
        log("this node's wall clock no longer lags the cluster (" + summary + ")");
    }
    return v;
  }

  void on_membership(const membership_event& ev) {
    using K = membership_event::kind;
    if (ev.what == K::peer_up) {
      auto [it, fresh] = peers.try_emplace(ev.peer.id, peer_state{clock_filter(config.samples), {}, {}});
      probe(it->first, it->second);  // at once: a joining node learns its standing within a round trip
    } else if (ev.what == K::peer_down) {
      peers.erase(ev.peer.id);
      reconsider();
    }
  }

  static task<> probe_loop(std::shared_ptr<impl> self) {
    while (!self->stopped) {
      if (!co_await self->sched.sleep(jittered(self->config.probe_interval, 0.25, self->rng))) break;
      for (auto& [id, p] : self->peers) self->probe(id, p);
    }
  }
};

clock_monitor::clock_monitor(transport& net, hyparview& membership, scheduler& sched, const hlc_clock& clock,
                             clock_monitor_config config)
    : impl_(std::make_shared<impl>(net, membership, sched, clock, std::move(config))) {}

clock_monitor::~clock_monitor() {
  impl_->stopped = true;
  if (impl_->started) impl_->net.on_message(channel::clock, nullptr);
  impl_->loops.cancel();
}

void clock_monitor::start() {
  auto* m = impl_.get();
  if (m->started) return;
  m->started = true;
  m->net.on_message(channel::clock,
                    [m](const std::string& from, const byte_slice& body) { return m->on_message(from, body); });
  std::weak_ptr<impl> weak = impl_;
  m->membership.add_listener([weak](const membership_event& ev) {
    if (auto p = weak.lock(); p && !p->stopped) p->on_membership(ev);
  });
  for (const auto& d : m->membership.active_view())
    m->on_membership({membership_event::kind::peer_up, d, {}});
  m->loops.spawn("clock_probes", impl::probe_loop(impl_));
}

task<> clock_monitor::stop() {
  impl_->stopped = true;
  co_await impl_->loops.stop();
}

std::vector<peer_clock> clock_monitor::peers() const {
  std::vector<peer_clock> out;
  for (const auto& [id, p] : impl_->peers)
    if (auto b = p.filter.best()) out.push_back({id, b->offset, b->round_trip, p.filter.size()});
  return out;
}

clock_verdict clock_monitor::verdict() const { return impl_->verdict(); }

bool clock_monitor::ahead_of_cluster() const { return impl_->ahead_now(); }

bool clock_monitor::refusing_writes() const {
  return impl_->config.policy == clock_skew_policy::refuse && impl_->ahead_now();
}

void clock_monitor::check_writable() {
  if (!refusing_writes()) return;
  ++impl_->counters.writes_refused;
  // Said here too: the verdict may have changed with time alone (the wall
  // clock catching up with the HLC) since the last answer.
  const auto v = impl_->reconsider();
  const auto ahead_by = v.measured ? v.lead_over_median() : impl_->lead_over_median;
  throw clock_skew_error("this node's next timestamp would be " + format_seconds(ahead_by) +
                             " ahead of the median of its peers' clocks (maximum offset " +
                             format_seconds(impl_->max_offset) + "): they would refuse the write; writes resume when "
                             "it is back in range",
                         ahead_by);
}

const clock_monitor_config& clock_monitor::config() const { return impl_->config; }
duration clock_monitor::max_offset() const { return impl_->max_offset; }
const clock_monitor_counters& clock_monitor::counters() const { return impl_->counters; }

}  // namespace barrel_p2p
