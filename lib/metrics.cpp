#include "barrel_p2p/metrics.hpp"

#include "barrel_p2p/clock_monitor.hpp"
#include "barrel_p2p/map.hpp"
#include "barrel_p2p/node.hpp"

#include <charconv>
#include <cmath>

namespace barrel_p2p {

namespace {

// Label values escape backslash, double quote and newline (the format's rule).
void append_label_value(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
}

void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  char buf[64];
  // Integral values print exactly (counters are integers up to 2^53).
  auto r = (v == std::floor(v) && std::fabs(v) < 9e15)
               ? std::to_chars(buf, buf + sizeof buf, static_cast<long long>(v))
               : std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

// `l` and one more label.
prometheus_writer::labels with(const prometheus_writer::labels& l, std::string key, std::string value) {
  auto out = l;
  out.emplace_back(std::move(key), std::move(value));
  return out;
}

template <class Counters>
struct field {
  const char* name;
  prometheus_writer::kind kind;
  const char* help;
  std::uint64_t Counters::*member;
};

using K = prometheus_writer::kind;

const field<transport_counters> transport_fields[] = {
    {"barrel_p2p_transport_connections_opened_total", K::counter, "Connections that completed the handshake.", &transport_counters::connections_opened},
    {"barrel_p2p_transport_connections_closed_total", K::counter, "Connections closed, for any reason.", &transport_counters::connections_closed},
    {"barrel_p2p_transport_connect_failures_total", K::counter, "Dials that failed (refused, timeout).", &transport_counters::connect_failures},
    {"barrel_p2p_transport_frames_sent_total", K::counter, "Frames written to peers.", &transport_counters::frames_sent},
    {"barrel_p2p_transport_frames_received_total", K::counter, "Frames read from peers.", &transport_counters::frames_received},
    {"barrel_p2p_transport_bytes_sent_total", K::counter, "Bytes written to peers.", &transport_counters::bytes_sent},
    {"barrel_p2p_transport_bytes_received_total", K::counter, "Bytes read from peers.", &transport_counters::bytes_received},
    {"barrel_p2p_transport_bad_frames_total", K::counter, "Frames rejected: oversized, unknown channel, undecodable body.", &transport_counters::bad_frames},
    {"barrel_p2p_transport_send_queue_drops_total", K::counter, "Messages dropped because a peer's send queue was full.", &transport_counters::send_queue_drops},
    {"barrel_p2p_transport_heartbeat_timeouts_total", K::counter, "Connections closed because the peer fell silent.", &transport_counters::heartbeat_timeouts},
    {"barrel_p2p_transport_read_holds_total", K::counter, "Times reading from a peer stopped because a layer's queued work from it was over budget (hold_reading).", &transport_counters::read_holds},
};

const field<hyparview_counters> membership_fields[] = {
    {"barrel_p2p_membership_joins_received_total", K::counter, "JOIN requests received.", &hyparview_counters::joins_received},
    {"barrel_p2p_membership_forward_joins_total", K::counter, "FORWARD_JOIN messages handled.", &hyparview_counters::forward_joins},
    {"barrel_p2p_membership_neighbor_requests_total", K::counter, "NEIGHBOR requests received.", &hyparview_counters::neighbor_requests},
    {"barrel_p2p_membership_neighbor_rejected_total", K::counter, "NEIGHBOR requests refused.", &hyparview_counters::neighbor_rejected},
    {"barrel_p2p_membership_disconnects_sent_total", K::counter, "DISCONNECT messages sent.", &hyparview_counters::disconnects_sent},
    {"barrel_p2p_membership_shuffles_sent_total", K::counter, "SHUFFLE messages originated.", &hyparview_counters::shuffles_sent},
    {"barrel_p2p_membership_shuffles_received_total", K::counter, "SHUFFLE messages received.", &hyparview_counters::shuffles_received},
    {"barrel_p2p_membership_peers_up_total", K::counter, "Peers added to the active view.", &hyparview_counters::peers_up},
    {"barrel_p2p_membership_peers_down_total", K::counter, "Peers removed from the active view.", &hyparview_counters::peers_down},
    {"barrel_p2p_membership_promotions_total", K::counter, "Passive peers promoted to repair the active view.", &hyparview_counters::promotions},
    {"barrel_p2p_membership_swaps_total", K::counter, "Random promotions started (an active peer swapped for a passive one or a contact).", &hyparview_counters::swaps},
    {"barrel_p2p_membership_bad_messages_total", K::counter, "Malformed membership messages dropped.", &hyparview_counters::bad_messages},
    {"barrel_p2p_membership_evictions_refused_total", K::counter, "High-priority NEIGHBORs or JOINs on a full active view refused: over evictions_per_second.", &hyparview_counters::evictions_refused},
    {"barrel_p2p_membership_joins_not_forwarded_total", K::counter, "JOINs not turned into FORWARD_JOIN walks: repeated by an active peer, or over join_forwards_per_second.", &hyparview_counters::joins_not_forwarded},
    {"barrel_p2p_membership_dials_refused_total", K::counter, "Dials a peer's message asked for (a walk end, a shuffle reply) refused: over its budget or max_dials_in_flight.", &hyparview_counters::dials_refused},
};

const field<plumtree_counters> broadcast_fields[] = {
    {"barrel_p2p_broadcast_originated_total", K::counter, "Broadcasts originated on this node.", &plumtree_counters::broadcasts},
    {"barrel_p2p_broadcast_gossip_sent_total", K::counter, "Payload messages sent (eager push and graft answers).", &plumtree_counters::gossip_sent},
    {"barrel_p2p_broadcast_gossip_received_total", K::counter, "Payload messages received.", &plumtree_counters::gossip_received},
    {"barrel_p2p_broadcast_delivered_total", K::counter, "First receipts delivered to a subscriber.", &plumtree_counters::delivered},
    {"barrel_p2p_broadcast_duplicates_total", K::counter, "Payloads received again (each one prunes a link).", &plumtree_counters::duplicates},
    {"barrel_p2p_broadcast_ihave_sent_total", K::counter, "IHAVE batches sent.", &plumtree_counters::ihave_sent},
    {"barrel_p2p_broadcast_ihave_ids_sent_total", K::counter, "Message ids announced in IHAVE batches.", &plumtree_counters::ihave_ids_sent},
    {"barrel_p2p_broadcast_graft_sent_total", K::counter, "GRAFT messages sent (a missing payload requested).", &plumtree_counters::graft_sent},
    {"barrel_p2p_broadcast_prune_sent_total", K::counter, "PRUNE messages sent.", &plumtree_counters::prune_sent},
    {"barrel_p2p_broadcast_graft_received_total", K::counter, "GRAFT messages received.", &plumtree_counters::graft_received},
    {"barrel_p2p_broadcast_prune_received_total", K::counter, "PRUNE messages received.", &plumtree_counters::prune_received},
    {"barrel_p2p_broadcast_duplicates_after_graft_total", K::counter, "Duplicates of messages this node had grafted (a graft timer fired before the eager copy came).", &plumtree_counters::duplicates_after_graft},
    {"barrel_p2p_broadcast_tree_links_lost_total", K::counter, "Eager (tree) peers that left the active view.", &plumtree_counters::tree_links_lost},
    {"barrel_p2p_broadcast_optimizations_total", K::counter, "Tree links swapped for a shorter path (the Plumtree paper's optimisation).", &plumtree_counters::optimizations},
    {"barrel_p2p_broadcast_bad_messages_total", K::counter, "Malformed broadcast messages dropped.", &plumtree_counters::bad_messages},
    {"barrel_p2p_broadcast_graft_answers_throttled_total", K::counter, "GRAFTs not answered: the asking peer's byte budget (graft_answer_bytes_per_second) was spent.", &plumtree_counters::graft_answers_throttled},
    {"barrel_p2p_broadcast_congested_announcements_total", K::counter, "Payloads for an eager peer sent as announcements instead: its send queue was over congested_fill.", &plumtree_counters::congested_announcements},
    {"barrel_p2p_broadcast_graft_answers_deferred_total", K::counter, "GRAFTs not answered yet: the grafter's send queue was over congested_fill (announced again).", &plumtree_counters::graft_answers_deferred},
    {"barrel_p2p_broadcast_grafts_deferred_total", K::counter, "GRAFTs not sent yet: the send queue to the announcer was over congested_fill (sent at a later tick).", &plumtree_counters::grafts_deferred},
    {"barrel_p2p_broadcast_origin_prunes_sent_total", K::counter, "PRUNEs sent for one origin's messages (the link leaves that origin's tree).", &plumtree_counters::origin_prunes_sent},
    {"barrel_p2p_broadcast_origin_prunes_received_total", K::counter, "PRUNEs received for one origin's messages.", &plumtree_counters::origin_prunes_received},
    {"barrel_p2p_broadcast_origin_trees", K::gauge, "Origins with per-origin tree state (bounded by max_origin_trees).", &plumtree_counters::origin_trees},
    {"barrel_p2p_broadcast_cache_messages", K::gauge, "Payloads kept to answer grafts.", &plumtree_counters::cache_size},
    {"barrel_p2p_broadcast_cache_bytes", K::gauge, "Payload bytes kept to answer grafts (bounded by cache_max_bytes).", &plumtree_counters::cache_bytes},
    {"barrel_p2p_broadcast_missing_messages", K::gauge, "Ids announced but not yet received.", &plumtree_counters::missing},
    {"barrel_p2p_broadcast_graft_wait_ms", K::gauge, "The wait before grafting an announced message, ms (graft_timeout, or the adaptive one).", &plumtree_counters::graft_wait_ms},
};

const field<map_counters> map_fields[] = {
    {"barrel_p2p_map_puts_total", K::counter, "Local puts.", &map_counters::puts},
    {"barrel_p2p_map_removes_total", K::counter, "Local removes.", &map_counters::removes},
    {"barrel_p2p_map_remote_changes_total", K::counter, "Keys changed by peer data.", &map_counters::remote_changes},
    {"barrel_p2p_map_rejected_local_total", K::counter, "Local puts refused by the validator.", &map_counters::rejected_local},
    {"barrel_p2p_map_tombstones_swept_total", K::counter, "Tombstones expired by the sweep.", &map_counters::tombstones_swept},
    {"barrel_p2p_map_pruned_total", K::counter, "Keys dropped when their writer went down (prune_on_peer_down).", &map_counters::pruned},
    {"barrel_p2p_map_write_failures_total", K::counter, "Local writes refused because the disk failed them (nothing applied).", &map_counters::write_failures},
    {"barrel_p2p_map_store_failed", K::gauge, "1 once the map's store stopped taking writes (a failed fsync, or a failed write it could not cut back); restart after fixing the disk.", &map_counters::store_failed},
};

const field<replica_counters> replica_fields[] = {
    {"barrel_p2p_replica_deltas_sent_total", K::counter, "Deltas gossiped.", &replica_counters::deltas_sent},
    {"barrel_p2p_replica_deltas_received_total", K::counter, "Deltas received.", &replica_counters::deltas_received},
    {"barrel_p2p_replica_syncs_sent_total", K::counter, "Full-sync snapshots pushed to peers.", &replica_counters::syncs_sent},
    {"barrel_p2p_replica_syncs_received_total", K::counter, "Full-sync snapshots received.", &replica_counters::syncs_received},
    {"barrel_p2p_replica_pulls_sent_total", K::counter, "Sync requests sent (late start, anti-entropy).", &replica_counters::pulls_sent},
    {"barrel_p2p_replica_anti_entropy_rounds_total", K::counter, "Anti-entropy rounds run.", &replica_counters::anti_entropy_rounds},
    {"barrel_p2p_replica_callback_errors_total", K::counter, "Replica callbacks that threw.", &replica_counters::callback_errors},
    {"barrel_p2p_replica_bad_messages_total", K::counter, "Replica payloads of unknown shape, ignored.", &replica_counters::bad_messages},
    {"barrel_p2p_replica_inbox_drops_total", K::counter, "Work items dropped by a full inbox (inbox_limit items or inbox_limit_bytes).", &replica_counters::inbox_drops},
    {"barrel_p2p_replica_inbox_peer_holds_total", K::counter, "Times a neighbour's reading was held: its deltas and snapshots queued here were over inbox_peer_limit_bytes.", &replica_counters::inbox_peer_holds},
    {"barrel_p2p_replica_inbox_bytes", K::gauge, "Wire bytes of the deltas and snapshots waiting in the inbox.", &replica_counters::inbox_bytes},
    {"barrel_p2p_replica_backpressure_waits_total", K::counter, "Local writes that waited for send-queue room.", &replica_counters::backpressure_waits},
    {"barrel_p2p_replica_sync_parts_sent_total", K::counter, "Parts of chunked full-sync snapshots sent.", &replica_counters::sync_parts_sent},
    {"barrel_p2p_replica_sync_parts_received_total", K::counter, "Parts of chunked full-sync snapshots received.", &replica_counters::sync_parts_received},
    {"barrel_p2p_replica_snapshots_too_large_total", K::counter, "Snapshots not sent: over max_snapshot_bytes.", &replica_counters::snapshots_too_large},
    {"barrel_p2p_replica_reconcile_rounds_total", K::counter, "Range reconciliations this node opened (anti-entropy, connect, late start, request_sync).", &replica_counters::reconcile_rounds},
    {"barrel_p2p_replica_reconcile_messages_sent_total", K::counter, "Range reconciliation messages sent.", &replica_counters::reconcile_sent},
    {"barrel_p2p_replica_reconcile_messages_received_total", K::counter, "Range reconciliation messages received.", &replica_counters::reconcile_received},
    {"barrel_p2p_replica_reconcile_crossed_total", K::counter, "Openings from a peer dropped because this node's own opening to it, sent at the same time, goes on.", &replica_counters::reconcile_crossed},
    {"barrel_p2p_replica_reconcile_entries_sent_total", K::counter, "Entries pushed to peers because reconciliation showed they lacked them.", &replica_counters::reconcile_items_sent},
    {"barrel_p2p_replica_reconcile_push_deferred_total", K::counter, "Entries peers lacked that were not pushed: over the reconciliation push budget (reconcile_push_window).", &replica_counters::reconcile_push_deferred},
    {"barrel_p2p_replica_reconcile_push_congested_total", K::counter, "Entries peers lacked that were not pushed yet: the send queue to the peer was over reconcile_push_max_fill or still held the last push to it.", &replica_counters::reconcile_push_congested},
};

const field<clock_monitor_counters> clock_fields[] = {
    {"barrel_p2p_clock_probes_sent_total", K::counter, "Clock offset probes sent to active peers.", &clock_monitor_counters::probes_sent},
    {"barrel_p2p_clock_answers_received_total", K::counter, "Answers to clock probes (each one a sample).", &clock_monitor_counters::answers_received},
    {"barrel_p2p_clock_unexpected_answers_total", K::counter, "Clock answers to no outstanding probe (late, repeated or forged), ignored.", &clock_monitor_counters::unexpected_answers},
    {"barrel_p2p_clock_bad_messages_total", K::counter, "Malformed clock messages dropped.", &clock_monitor_counters::bad_messages},
    {"barrel_p2p_clock_writes_refused_total", K::counter, "Local writes refused because this node's clock is ahead of the cluster.", &clock_monitor_counters::writes_refused},
    {"barrel_p2p_clock_warnings_total", K::counter, "Warnings logged about a peer past half the maximum clock offset.", &clock_monitor_counters::warnings},
};

template <class Counters>
void write_fields(prometheus_writer& w, const auto& fields, const prometheus_writer::labels& l,
                  const Counters& c) {
  for (const auto& f : fields) {
    w.family(f.name, f.kind, f.help);
    w.sample(l, static_cast<double>(c.*f.member));
  }
}

void write_clock_metrics(prometheus_writer& w, const clock_monitor& clocks, const prometheus_writer::labels& l) {
  write_fields(w, clock_fields, l, clocks.counters());
  const auto peers = clocks.peers();
  w.family("barrel_p2p_peer_clock_offset_seconds", K::gauge,
           "Each active peer's wall clock minus this node's (positive: the peer is ahead).");
  for (const auto& p : peers) w.sample(with(l, "peer", p.peer_id), to_seconds(p.offset));
  w.family("barrel_p2p_peer_clock_round_trip_seconds", K::gauge,
           "Round trip of the probe each peer's offset estimate comes from (the estimate's uncertainty is half of it).");
  for (const auto& p : peers) w.sample(with(l, "peer", p.peer_id), to_seconds(p.round_trip));
  w.family("barrel_p2p_clock_ahead_of_cluster", K::gauge,
           "1 while this node's clock is ahead of most measured peers by more than max_clock_offset.");
  w.sample(l, clocks.ahead_of_cluster() ? 1.0 : 0.0);
  w.family("barrel_p2p_clock_refusing_writes", K::gauge, "1 while local writes are refused for clock skew (policy refuse).");
  w.sample(l, clocks.refusing_writes() ? 1.0 : 0.0);
}

}  // namespace

void prometheus_writer::family(std::string_view name, kind k, std::string_view help) {
  if (current_ == name) return;  // one header per family
  current_ = name;
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += help;
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += k == kind::counter ? " counter\n" : " gauge\n";
}

void prometheus_writer::singles(const labels& l, std::initializer_list<single> rows) {
  for (const auto& r : rows) {
    family(r.name, r.what, r.help);
    sample(l, r.value);
  }
}

void prometheus_writer::sample(const labels& l, double value) {
  out_ += current_;
  if (!l.empty()) {
    out_ += '{';
    for (std::size_t i = 0; i < l.size(); ++i) {
      if (i) out_ += ',';
      out_ += l[i].first;
      out_ += "=\"";
      append_label_value(out_, l[i].second);
      out_ += '"';
    }
    out_ += '}';
  }
  out_ += ' ';
  append_number(out_, value);
  out_ += '\n';
}

void write_node_metrics(prometheus_writer& w, node& n) {
  const prometheus_writer::labels l{{"node", n.id()}};
  write_fields(w, transport_fields, l, n.net().counters());
  w.family("barrel_p2p_transport_handshake_failures_total", K::counter,
           "Handshakes refused, by reason (timeout, over_capacity, tls, unknown_key, certificate, identity, protocol, self, duplicate_id, id_in_use).");
  for (std::size_t i = 0; i < handshake_failure_count; ++i)
    w.sample(with(l, "reason", std::string(to_string(static_cast<handshake_failure>(i)))),
             static_cast<double>(n.net().counters().handshake_failures_by_reason[i]));
  w.family("barrel_p2p_transport_connected_peers", K::gauge, "Peers with an open connection.");
  w.sample(l, static_cast<double>(n.net().connected_peers().size()));
  write_fields(w, membership_fields, l, n.membership().counters());
  w.family("barrel_p2p_membership_active_view_size", K::gauge, "Peers in the active view.");
  w.sample(l, static_cast<double>(n.membership().active_view().size()));
  w.family("barrel_p2p_membership_passive_view_size", K::gauge, "Peers in the passive view.");
  w.sample(l, static_cast<double>(n.membership().passive_view().size()));
  write_fields(w, broadcast_fields, l, n.broadcast().counters());
  w.family("barrel_p2p_broadcast_eager_peers", K::gauge, "Peers in the eager-push set (tree links).");
  w.sample(l, static_cast<double>(n.broadcast().eager_peers().size()));
  w.family("barrel_p2p_broadcast_lazy_peers", K::gauge, "Peers in the lazy-push set.");
  w.sample(l, static_cast<double>(n.broadcast().lazy_peers().size()));
  write_clock_metrics(w, n.clocks(), l);
}

void write_map_metrics(prometheus_writer& w, const node& n, const std::vector<std::shared_ptr<map>>& maps) {
  // Family by family across maps: the format wants a family's samples together.
  auto labels_of = [&](const map& m) { return prometheus_writer::labels{{"node", n.id()}, {"map", m.name()}}; };
  w.family("barrel_p2p_map_keys", K::gauge, "Live keys.");
  for (const auto& m : maps) w.sample(labels_of(*m), static_cast<double>(m->size()));
  w.family("barrel_p2p_map_entries", K::gauge, "Entries including tombstones.");
  for (const auto& m : maps) w.sample(labels_of(*m), static_cast<double>(m->entry_count()));
  for (const auto& f : map_fields) {
    w.family(f.name, f.kind, f.help);
    for (const auto& m : maps) w.sample(labels_of(*m), static_cast<double>(m->counters().*f.member));
  }
  w.family("barrel_p2p_map_rejected_remote_total", K::counter,
           "Peer entries dropped, by reason: clock_ahead (a timestamp beyond max_clock_offset), invalid (validator or malformed).");
  for (const auto& m : maps) {
    const auto c = m->counters();
    w.sample(with(labels_of(*m), "reason", "clock_ahead"), static_cast<double>(c.rejected_clock_ahead));
    w.sample(with(labels_of(*m), "reason", "invalid"), static_cast<double>(c.rejected_remote - c.rejected_clock_ahead));
  }
  for (const auto& f : replica_fields) {
    w.family(f.name, f.kind, f.help);
    for (const auto& m : maps) w.sample(labels_of(*m), static_cast<double>(m->replica_stats().*f.member));
  }
}

}  // namespace barrel_p2p
