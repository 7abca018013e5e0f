#include "barrel_p2p/range_sync.hpp"
#include "big_endian.hpp"

#include <algorithm>
#include <limits>

namespace barrel_p2p {

namespace {

constexpr std::size_t fingerprint_bytes = 24;

using detail::append_be64;
using detail::get_be64;

json pack_items(const std::vector<sync_item>& items) {
  std::vector<std::uint8_t> bytes;
  bytes.reserve(items.size() * sync_item::binary_size);
  for (const auto& i : items) {
    append_be64(bytes, i.ts);
    append_be64(bytes, i.id);
  }
  return json::binary(std::move(bytes));
}

// Items of a packed string, in order, each below `upper` and at or above
// `lower`; nullopt when not.
std::optional<std::vector<sync_item>> unpack_items(const json::binary_t& bytes, const sync_item& lower,
                                                   const std::optional<sync_item>& upper, bool ordered) {
  if (bytes.size() % sync_item::binary_size != 0) return std::nullopt;
  std::vector<sync_item> out;
  out.reserve(bytes.size() / sync_item::binary_size);
  for (std::size_t off = 0; off < bytes.size(); off += sync_item::binary_size) {
    const sync_item item{get_be64(bytes.data() + off), get_be64(bytes.data() + off + 8)};
    if (ordered) {
      if (item < lower || (upper && !(item < *upper))) return std::nullopt;
      if (!out.empty() && !(out.back() < item)) return std::nullopt;
    }
    out.push_back(item);
  }
  return out;
}

// Appends a range, folding a skip into a skip just before it.
void push_range(std::vector<sync_range>& out, sync_range r) {
  if (r.what == sync_range::mode::skip && !out.empty() && out.back().what == sync_range::mode::skip) {
    out.back().upper = r.upper;
    return;
  }
  out.push_back(std::move(r));
}

sync_range skip_to(const std::optional<sync_item>& upper) {
  sync_range r;
  r.upper = upper;
  return r;
}

}  // namespace

range_sync_message range_sync_start(const sync_index& index, const range_sync_config& config) {
  sync_range whole;
  if (index.size() <= config.list_threshold) {
    whole.what = sync_range::mode::list;
    index.items(0, index.size(), whole.items);
  } else {
    whole.what = sync_range::mode::fingerprint;
    whole.fp = index.fingerprint_of(0, index.size());
  }
  range_sync_message m;
  m.ranges.push_back(std::move(whole));
  m.opening = true;
  return m;
}

range_sync_step range_sync_answer(const sync_index& index, const range_sync_message& message,
                                  const range_sync_config& config) {
  range_sync_step out;
  for (const auto& item : message.need)
    if (index.contains(item)) out.send.push_back(item);

  range_sync_message reply;
  bool more = false;  // a range the peer must look at again
  std::size_t lower = 0;
  std::vector<sync_item> mine;
  // An answer has at most max_ranges ranges. A range is answered only if
  // what it needs, plus one range for everything after it, still fits;
  // otherwise everything from it to the end goes back as one fingerprint
  // (the rest), for the peer to split. The first range always fits (max
  // ranges exceeds the parts of a split), so each message settles or
  // splits at least its first differing range: exchanges end, however many
  // ranges differ.
  const auto max_ranges = std::max<std::size_t>(config.max_ranges, 3);
  const auto parts_limit = std::max<std::size_t>(2, std::min(config.branching, max_ranges - 1));
  for (std::size_t i = 0; i < message.ranges.size(); ++i) {
    const auto& r = message.ranges[i];
    const std::size_t upper = r.upper ? index.rank(*r.upper) : index.size();
    const std::size_t count = upper > lower ? upper - lower : 0;
    const std::size_t tail = i + 1 < message.ranges.size() ? 1 : 0;
    const std::size_t room = max_ranges - std::min(max_ranges, reply.ranges.size());
    const auto fp = r.what == sync_range::mode::fingerprint ? index.fingerprint_of(lower, upper) : fingerprint{};
    const bool differs = r.what == sync_range::mode::fingerprint && fp != r.fp;
    const std::size_t parts = std::min(parts_limit, count);
    const bool split = differs && count > config.list_threshold && parts >= 2;
    if ((split ? parts : 1) + tail > room) {
      sync_range rest;
      rest.what = sync_range::mode::fingerprint;
      rest.fp = index.fingerprint_of(lower, index.size());
      push_range(reply.ranges, std::move(rest));
      more = true;
      break;
    }
    if (r.what == sync_range::mode::skip || (r.what == sync_range::mode::fingerprint && !differs)) {
      push_range(reply.ranges, skip_to(r.upper));
    } else if (r.what == sync_range::mode::fingerprint && !split) {
      more = true;
      sync_range l;
      l.upper = r.upper;
      l.what = sync_range::mode::list;
      index.items(lower, upper, l.items);
      push_range(reply.ranges, std::move(l));
    } else if (r.what == sync_range::mode::fingerprint) {
      more = true;
      for (std::size_t p = 0; p < parts; ++p) {
        const auto from = lower + count * p / parts;
        const auto to = lower + count * (p + 1) / parts;
        sync_range f;
        // Each part ends where the next one's first item is.
        f.upper = p + 1 == parts ? r.upper : std::optional<sync_item>(index.at(to));
        f.what = sync_range::mode::fingerprint;
        f.fp = index.fingerprint_of(from, to);
        push_range(reply.ranges, std::move(f));
      }
    } else {
      // A list: both sides of this range are known now, what differs is
      // settled here.
      mine.clear();
      index.items(lower, upper, mine);
      std::size_t a = 0, b = 0;
      while (a < mine.size() || b < r.items.size()) {
        if (b == r.items.size() || (a < mine.size() && mine[a] < r.items[b])) {
          out.send.push_back(mine[a++]);
        } else if (a == mine.size() || r.items[b] < mine[a]) {
          if (reply.need.size() < config.max_need) reply.need.push_back(r.items[b]);
          ++b;
        } else {
          ++a;
          ++b;
        }
      }
      push_range(reply.ranges, skip_to(r.upper));
    }
    lower = std::max(lower, upper);
  }
  if (!more) reply.ranges.clear();
  if (more || !reply.need.empty()) out.reply = std::move(reply);
  return out;
}

json encode_range_sync(const range_sync_message& message) {
  json ranges = json::array();
  for (const auto& r : message.ranges) {
    json upper = nullptr;
    if (r.upper) {
      const auto b = r.upper->to_bytes();
      upper = json::binary(std::vector<std::uint8_t>(b.begin(), b.end()));
    }
    switch (r.what) {
      case sync_range::mode::skip:
        ranges.push_back(json::array({upper, 0}));
        break;
      case sync_range::mode::fingerprint: {
        std::vector<std::uint8_t> fp;
        fp.reserve(fingerprint_bytes);
        append_be64(fp, r.fp.count);
        append_be64(fp, r.fp.sum_a);
        append_be64(fp, r.fp.sum_b);
        ranges.push_back(json::array({upper, 1, json::binary(std::move(fp))}));
        break;
      }
      case sync_range::mode::list:
        ranges.push_back(json::array({upper, 2, pack_items(r.items)}));
        break;
    }
  }
  json out = {{"r", std::move(ranges)}};
  if (!message.need.empty()) out["w"] = pack_items(message.need);
  if (message.opening) out["o"] = 1;
  return out;
}

range_sync_parse_result parse_range_sync(const json& wire, const range_sync_config& config) noexcept {
  // Lists come from answers (at most list_threshold items per range) or
  // from an opening message (one range).
  const std::size_t max_list_items = std::max<std::size_t>(config.max_ranges, 1) * std::max<std::size_t>(config.list_threshold, 1);
  range_sync_parse_result res;
  const auto fail = [&](range_sync_error e) {
    res.message.reset();
    res.error = e;
    return res;
  };
  try {
    if (!wire.is_object()) return fail(range_sync_error::shape);
    const auto r = wire.find("r");
    if (r == wire.end() || !r->is_array()) return fail(range_sync_error::shape);
    if (r->size() > config.max_ranges) return fail(range_sync_error::too_large);
    range_sync_message m;
    m.ranges.reserve(r->size());
    sync_item lower{};
    std::size_t listed = 0;
    for (std::size_t i = 0; i < r->size(); ++i) {
      const auto& e = (*r)[i];
      if (!e.is_array() || e.size() < 2 || e.size() > 3) return fail(range_sync_error::shape);
      sync_range range;
      const bool last = i + 1 == r->size();
      if (e[0].is_null()) {
        if (!last) return fail(range_sync_error::order);  // only the last range ends at the end
      } else if (e[0].is_binary()) {
        range.upper = sync_item::from_bytes(e[0].get_binary());
        if (!range.upper) return fail(range_sync_error::shape);
        if (last) return fail(range_sync_error::order);  // the last range ends at the end
        if (!(lower < *range.upper) && !(i == 0 && lower == *range.upper)) return fail(range_sync_error::order);
      } else {
        return fail(range_sync_error::shape);
      }
      // (Unsigned from CBOR; a json built in memory holds a small int as signed.)
      if (!e[1].is_number_integer() || e[1].get<std::int64_t>() < 0 || e[1].get<std::int64_t>() > 2)
        return fail(range_sync_error::shape);
      range.what = static_cast<sync_range::mode>(e[1].get<std::int64_t>());
      switch (range.what) {
        case sync_range::mode::skip:
          if (e.size() != 2) return fail(range_sync_error::shape);
          break;
        case sync_range::mode::fingerprint: {
          if (e.size() != 3 || !e[2].is_binary() || e[2].get_binary().size() != fingerprint_bytes)
            return fail(range_sync_error::shape);
          const auto* p = e[2].get_binary().data();
          range.fp = {get_be64(p), get_be64(p + 8), get_be64(p + 16)};
          break;
        }
        case sync_range::mode::list: {
          if (e.size() != 3 || !e[2].is_binary() || e[2].get_binary().size() % sync_item::binary_size != 0)
            return fail(range_sync_error::shape);
          const auto& bytes = e[2].get_binary();
          listed += bytes.size() / sync_item::binary_size;
          if (listed > max_list_items) return fail(range_sync_error::too_large);
          auto items = unpack_items(bytes, lower, range.upper, true);
          if (!items) return fail(range_sync_error::order);
          range.items = std::move(*items);
          break;
        }
      }
      if (range.upper) lower = *range.upper;
      m.ranges.push_back(std::move(range));
    }
    if (const auto w = wire.find("w"); w != wire.end()) {
      if (!w->is_binary()) return fail(range_sync_error::shape);
      if (w->get_binary().size() % sync_item::binary_size != 0) return fail(range_sync_error::shape);
      if (w->get_binary().size() / sync_item::binary_size > config.max_need) return fail(range_sync_error::too_large);
      // Increasing, so each item is asked for once (an answer builds them
      // in order): a repeated item cannot multiply the work it causes.
      auto need = unpack_items(w->get_binary(), {}, std::nullopt, true);
      if (!need) return fail(range_sync_error::order);
      m.need = std::move(*need);
    }
    if (const auto o = wire.find("o"); o != wire.end()) {
      // An opening is one range to the end and asks for nothing.
      if (!o->is_number_integer() || o->get<std::int64_t>() != 1) return fail(range_sync_error::shape);
      if (m.ranges.size() != 1 || !m.need.empty()) return fail(range_sync_error::shape);
      m.opening = true;
    }
    res.message = std::move(m);
    return res;
  } catch (...) {
    return fail(range_sync_error::shape);
  }
}

}  // namespace barrel_p2p
