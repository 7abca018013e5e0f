#include "barrel_p2p/crdt_wire.hpp"

#include "barrel_p2p/keyed_hash.hpp"

#include <algorithm>
#include <mutex>
#include <unordered_set>

namespace barrel_p2p::crdt_wire {

std::optional<json> encode_items(const ormap& m, const std::vector<sync_item>& items) {
  json out = json::object();
  for (const auto& item : items)
    if (const auto* found = m.current_of(item)) out[found->first] = encode_entry(found->second);
  if (out.empty()) return std::nullopt;
  return out;
}

json encode_hlc(const hlc_timestamp& ts) { return json::array({ts.wall_ms, ts.logical}); }

json encode_entry(const entry& e) {
  if (const auto* v = std::get_if<value_entry>(&e))
    return {{"v", v->payload}, {"d", json::array({json::array({v->dot.node, encode_hlc(v->dot.hlc)})})}};
  return {{"t", encode_hlc(std::get<tombstone>(e).hlc)}};
}

void write_entry(cbor_writer& w, const entry& e) {
  const auto hlc = [&](const hlc_timestamp& ts) { w.array(2).uint(ts.wall_ms).uint(ts.logical); };
  if (const auto* v = std::get_if<value_entry>(&e)) {
    w.map(2).text("v").value(v->payload).text("d").array(1).array(2).text(v->dot.node);
    hlc(v->dot.hlc);
  } else {
    w.map(1).text("t");
    hlc(std::get<tombstone>(e).hlc);
  }
}

std::optional<std::vector<std::uint8_t>> write_items(const ormap& m, const std::vector<sync_item>& items) {
  // The map's length comes first: find the current entries, then write.
  std::vector<const ormap::container::value_type*> current;
  current.reserve(items.size());
  for (const auto& item : items)
    if (const auto* found = m.current_of(item)) current.push_back(found);
  if (current.empty()) return std::nullopt;
  cbor_writer w;
  w.map(current.size());
  for (const auto* found : current) {
    w.text(found->first);
    write_entry(w, found->second);
  }
  return w.take();
}

json encode_map(const ormap& m) {
  json out = json::object();
  for (const auto& [k, e] : m.entries()) out[k] = encode_entry(e);
  return out;
}

namespace {

// The shape and range of an HLC, before the clock is asked.
std::optional<hlc_timestamp> parse_hlc(const json& j) {
  if (!j.is_array() || j.size() != 2) return std::nullopt;
  const auto& wall = j[0];
  const auto& logical = j[1];
  if (!wall.is_number_unsigned() || !logical.is_number_unsigned()) return std::nullopt;
  const auto l = logical.get<std::uint64_t>();
  if (l > hlc_timestamp::logical_limit) return std::nullopt;
  const hlc_timestamp ts{wall.get<std::uint64_t>(), static_cast<std::uint32_t>(l)};
  if (!ts.valid()) return std::nullopt;
  return ts;
}

bool admissible(const hlc_timestamp& ts, const hlc_clock& clock) noexcept {
  try {
    return clock.admissible(ts);
  } catch (...) {  // an injected wall source that throws
    return false;
  }
}

// Where decoding an entry stopped, when a timestamp was too far ahead.
struct too_far_ahead {
  hlc_timestamp ts;
  std::string writer;  // empty for a tombstone
};

// A timestamp of the entry: well formed, and admissible unless `ahead`
// records it (the entry is then refused for that reason alone).
std::optional<hlc_timestamp> entry_hlc(const json& j, const hlc_clock& clock, std::optional<too_far_ahead>& ahead,
                                       const std::string& writer) {
  auto ts = parse_hlc(j);
  if (!ts) return std::nullopt;
  if (!admissible(*ts, clock)) {
    ahead = too_far_ahead{*ts, writer};
    return std::nullopt;
  }
  return ts;
}

}  // namespace

std::optional<hlc_timestamp> decode_hlc(const json& j, const hlc_clock& clock) noexcept {
  try {
    auto ts = parse_hlc(j);
    if (!ts || !admissible(*ts, clock)) return std::nullopt;
    return ts;
  } catch (...) {
    return std::nullopt;
  }
}

namespace {

std::optional<dot> decode_dot(const json& j, const hlc_clock& clock, const limits& lim,
                              std::optional<too_far_ahead>& ahead) {
  if (!j.is_array() || j.size() != 2 || !j[0].is_string()) return std::nullopt;
  const auto& node = j[0].get_ref<const std::string&>();
  if (node.empty() || node.size() > lim.max_node_id_bytes) return std::nullopt;
  auto ts = entry_hlc(j[1], clock, ahead, node);
  if (!ts) return std::nullopt;
  return dot{node, *ts};
}

// `ahead` is set when the entry was refused only for a timestamp too far ahead.
std::optional<entry> decode_unchecked(const std::string& key, const json& j,
                                      const hlc_clock& clock, const leaf_validator& leaf,
                                      const limits& lim, std::optional<too_far_ahead>& ahead) {
  if (key.size() > lim.max_key_bytes || !j.is_object()) return std::nullopt;
  const auto t = j.find("t");
  const auto v = j.find("v");
  const auto d = j.find("d");
  const bool is_tombstone = t != j.end();
  const bool is_value = v != j.end() && d != j.end();
  if (is_tombstone == is_value || j.size() != (is_value ? 2u : 1u)) return std::nullopt;
  if (is_tombstone) {
    auto ts = entry_hlc(*t, clock, ahead, {});
    if (!ts) return std::nullopt;
    return tombstone{*ts};
  }
  if (!d->is_array() || d->empty() || d->size() > lim.max_dots) return std::nullopt;
  std::optional<dot> greatest;
  for (const auto& dj : *d) {
    auto one = decode_dot(dj, clock, lim, ahead);
    if (!one) return std::nullopt;  // one bad dot spoils the whole entry
    if (!greatest || *one > *greatest) greatest = std::move(one);
  }
  if (leaf && !leaf(key, *v)) {
    ahead.reset();  // the leaf's verdict, not the clock's
    return std::nullopt;
  }
  return value_entry{*v, std::move(*greatest)};
}

std::optional<entry> decode_noexcept(const std::string& key, const json& j, const hlc_clock& clock,
                                     const leaf_validator& leaf, const limits& lim,
                                     std::optional<too_far_ahead>& ahead) noexcept {
  try {
    return decode_unchecked(key, j, clock, leaf, lim, ahead);
  } catch (...) {  // a leaf that throws, or allocation failure on a copy
    return std::nullopt;
  }
}

}  // namespace

std::optional<entry> decode_entry(const std::string& key, const json& j,
                                  const hlc_clock& clock, const leaf_validator& leaf,
                                  const limits& lim) noexcept {
  std::optional<too_far_ahead> ahead;
  return decode_noexcept(key, j, clock, leaf, lim, ahead);
}

bool valid_entry(const std::string& key, const json& j, const hlc_clock& clock,
                 const leaf_validator& leaf, const limits& lim) noexcept {
  return decode_entry(key, j, clock, leaf, lim).has_value();
}

namespace {

// Counts one dropped entry, and when it was dropped for a timestamp too far
// ahead, by how much and whose.
void note_rejection(rejections& why, std::optional<too_far_ahead>& ahead, const hlc_clock& clock) {
  ++why.total;
  if (!ahead) return;
  ++why.clock_ahead;
  std::uint64_t wall = 0;
  try {
    wall = clock.wall_ms();
  } catch (...) {
  }
  const auto lead = ahead->ts.wall_ms > wall ? ahead->ts.wall_ms - wall : 0;
  if (lead >= why.max_ahead_ms) {
    why.max_ahead_ms = lead;
    if (!ahead->writer.empty()) why.ahead_writer = std::move(ahead->writer);
  }
}

// The valid entries of `payload`, in its order (a json object's keys are
// distinct), and why the others were dropped.
std::vector<std::pair<std::string, entry>> accept_entries(const json& payload, const hlc_clock& clock,
                                                          const leaf_validator& leaf, rejections& why,
                                                          const limits& lim) noexcept {
  std::vector<std::pair<std::string, entry>> out;
  try {
    if (payload.is_object()) {
      out.reserve(payload.size());
      for (const auto& [key, value] : payload.items()) {
        std::optional<too_far_ahead> ahead;
        if (auto e = decode_noexcept(key, value, clock, leaf, lim, ahead)) {
          out.emplace_back(key, std::move(*e));
          continue;
        }
        note_rejection(why, ahead, clock);
      }
    } else {
      why.total = 1;  // the whole payload is the bad entry
    }
  } catch (...) {
    ++why.total;
  }
  return out;
}

}  // namespace

ormap accept(const json& payload, const hlc_clock& clock, const leaf_validator& leaf, rejections& why,
             const limits& lim) noexcept {
  ormap out;
  try {
    for (auto& [key, e] : accept_entries(payload, clock, leaf, why, lim)) out.merge_entry(key, std::move(e));
  } catch (...) {  // allocation failure
    ++why.total;
  }
  return out;
}

ormap accept(const json& payload, const hlc_clock& clock, const leaf_validator& leaf,
             std::size_t* rejected, const limits& lim) noexcept {
  rejections why;
  auto out = accept(payload, clock, leaf, why, lim);
  if (rejected) *rejected = why.total;
  return out;
}

namespace {

// The end of every ingest: the clock moves past the newest accepted entry,
// then the entries merge.
void merge_accepted(ormap& local, std::vector<std::pair<std::string, entry>> accepted, hlc_clock& clock,
                    ingest_result& r, std::shared_mutex* merge_lock) {
  r.accepted = accepted.size();
  if (accepted.empty()) return;
  const auto newest = std::max_element(accepted.begin(), accepted.end(), [](const auto& a, const auto& b) {
    return entry_hlc(a.second) < entry_hlc(b.second);
  });
  try {
    clock.update(entry_hlc(newest->second));
  } catch (const hlc_offset_error&) {
    // Only if the wall clock stepped back between accept and here: the
    // entries are merged; the clock catches up on the next one.
  }
  std::unique_lock<std::shared_mutex> lock;
  if (merge_lock) lock = std::unique_lock(*merge_lock);
  for (auto& [key, e] : accepted) {
    const auto merged = local.merge_entry(key, std::move(e));
    if (!merged) continue;
    if (merged.removed_value) r.removed_values.push_back(r.changed.size());
    r.changed.push_back(std::move(key));
  }
}

}  // namespace

ingest_result ingest(ormap& local, const json& incoming, hlc_clock& clock,
                     const leaf_validator& leaf, const limits& lim, std::shared_mutex* merge_lock) {
  ingest_result r;
  merge_accepted(local, accept_entries(incoming, clock, leaf, r.why, lim), clock, r, merge_lock);
  return r;
}

namespace {

// A timestamp [wall, logical] read from CBOR: the same checks as
// entry_hlc's on json.
std::optional<hlc_timestamp> read_entry_hlc(cbor_reader& r, const hlc_clock& clock,
                                            std::optional<too_far_ahead>& ahead, std::string_view writer) {
  const auto n = r.array();
  if (!n || *n != 2) return std::nullopt;
  const auto wall = r.uint();
  const auto logical = wall ? r.uint() : std::nullopt;
  if (!logical || *logical > hlc_timestamp::logical_limit) return std::nullopt;
  const hlc_timestamp ts{*wall, static_cast<std::uint32_t>(*logical)};
  if (!ts.valid()) return std::nullopt;
  if (!admissible(ts, clock)) {
    ahead = too_far_ahead{ts, std::string(writer)};
    return std::nullopt;
  }
  return ts;
}

// One entry from the bytes of its value (an item cbor_reader::item took, so
// its map keys are text and its values decode). The same verdicts as
// decode_unchecked; `decode_failed` when a value does not decode after all.
std::optional<entry> read_entry(const std::string& key, std::span<const std::uint8_t> bytes,
                                const hlc_clock& clock, const leaf_validator& leaf, const limits& lim,
                                const cbor_limits& cbor, std::optional<too_far_ahead>& ahead,
                                bool& decode_failed) {
  if (key.size() > lim.max_key_bytes) return std::nullopt;
  cbor_reader r(bytes);
  const auto pairs = r.map();
  if (!pairs) return std::nullopt;  // not an object
  // The last of a repeated field counts, as in a json object.
  std::optional<std::span<const std::uint8_t>> t, v, d;
  bool other = false;
  std::size_t budget = cbor.max_items;
  for (std::uint64_t i = 0; i < *pairs; ++i) {
    const auto name = r.text(bytes.size());
    const auto value = name ? r.item(cbor.max_depth, budget) : std::nullopt;
    if (!value) return std::nullopt;  // cannot happen after item(): refuse
    if (*name == "t") t = value;
    else if (*name == "v") v = value;
    else if (*name == "d") d = value;
    else other = true;
  }
  const bool is_tombstone = t.has_value();
  const bool is_value = v && d;
  const std::size_t size = (t ? 1 : 0) + (v ? 1 : 0) + (d ? 1 : 0) + (other ? 1 : 0);
  if (is_tombstone == is_value || size != (is_value ? 2u : 1u)) return std::nullopt;
  if (is_tombstone) {
    cbor_reader hlc(*t);
    auto ts = read_entry_hlc(hlc, clock, ahead, {});
    if (!ts || !hlc.at_end()) return std::nullopt;
    return tombstone{*ts};
  }
  cbor_reader dots(*d);
  const auto count = dots.array();
  if (!count || *count == 0 || *count > lim.max_dots) return std::nullopt;
  std::optional<dot> greatest;
  for (std::uint64_t i = 0; i < *count; ++i) {
    const auto fields = dots.array();
    if (!fields || *fields != 2) return std::nullopt;
    const auto node = dots.text(lim.max_node_id_bytes);
    if (!node || node->empty()) return std::nullopt;
    auto ts = read_entry_hlc(dots, clock, ahead, *node);
    if (!ts) return std::nullopt;  // one bad dot spoils the whole entry
    dot one{std::string(*node), *ts};
    if (!greatest || one > *greatest) greatest = std::move(one);
  }
  auto payload = decode_cbor(*v, cbor);
  if (!payload) {
    decode_failed = true;
    return std::nullopt;
  }
  if (leaf && !leaf(key, *payload)) {
    ahead.reset();  // the leaf's verdict, not the clock's
    return std::nullopt;
  }
  return value_entry{std::move(*payload), std::move(*greatest)};
}

}  // namespace

std::optional<ingest_result> ingest_cbor(ormap& local, std::span<const std::uint8_t> bytes, hlc_clock& clock,
                                         const leaf_validator& leaf, const limits& lim, const cbor_limits& cbor,
                                         std::shared_mutex* merge_lock) {
  ingest_result r;
  std::vector<std::pair<std::string, entry>> accepted;
  cbor_reader in(bytes);
  const auto pairs = in.map();
  if (!pairs) return std::nullopt;
  // The whole map is read before anything merges: bytes that turn out not
  // to be a map in wire form leave `local` as it was. Depth and items are
  // held a little tighter than decode_cbor would hold the message around
  // the snapshot, so that whatever this takes, that would have taken too.
  std::size_t budget = cbor.max_items > 16 ? cbor.max_items - 16 : 0;
  const std::size_t depth = cbor.max_depth > 2 ? cbor.max_depth - 2 : 0;
  // A key named twice: a json tree keeps the last entry; so does the json
  // way, which the caller takes on nullopt (honest encoders never do this).
  std::unordered_set<std::string_view, keyed_string_hash> keys;
  keys.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(*pairs, bytes.size())));
  for (std::uint64_t i = 0; i < *pairs; ++i) {
    const auto key = budget > 0 ? in.text(bytes.size()) : std::nullopt;
    if (!key || !keys.insert(*key).second) return std::nullopt;
    --budget;
    const auto value = in.item(depth, budget);
    if (!value) return std::nullopt;
    std::string k(*key);
    std::optional<too_far_ahead> ahead;
    bool decode_failed = false;
    std::optional<entry> e;
    try {
      e = read_entry(k, *value, clock, leaf, lim, cbor, ahead, decode_failed);
    } catch (...) {  // a leaf that throws, or allocation failure on a copy
      e.reset();
    }
    if (decode_failed) return std::nullopt;
    if (e) accepted.emplace_back(std::move(k), std::move(*e));
    else note_rejection(r.why, ahead, clock);
  }
  if (!in.at_end()) return std::nullopt;
  merge_accepted(local, std::move(accepted), clock, r, merge_lock);
  return r;
}

}  // namespace barrel_p2p::crdt_wire
