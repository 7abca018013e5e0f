// Range-based reconciliation: the fingerprint index against a plain sorted
// set, and the protocol between two random sets with random differences,
// which must always end with both holding their union.
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/keyed_hash.hpp>
#include <barrel_p2p/range_sync.hpp>
#include <barrel_p2p/sync_index.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace barrel_p2p;

namespace {

fingerprint brute_fingerprint(const std::vector<sync_item>& sorted, std::size_t from, std::size_t to) {
  fingerprint f;
  for (std::size_t i = from; i < to; ++i) f.add(sorted[i]);
  return f;
}

sync_item random_item(std::mt19937_64& rng, std::uint64_t ts_range) {
  return {rng() % ts_range, rng()};
}

// What one exchange cost: messages, and the bytes of their CBOR.
struct exchange_cost {
  std::size_t messages = 0;
  std::size_t bytes = 0;
  std::size_t items_sent = 0;
};

// Runs an exchange started by `a` until no side has more to say. Items one
// side sends are inserted into the other's index at once, as the data push
// would merge them. Each message goes through the wire form.
exchange_cost reconcile(sync_index& a, sync_index& b, const range_sync_config& config = {},
                        std::size_t max_messages = 64) {
  exchange_cost cost;
  std::optional<range_sync_message> next = range_sync_start(a, config);
  sync_index* sides[2] = {&a, &b};
  std::size_t turn = 1;  // b answers first
  while (next) {
    REQUIRE_MESSAGE(cost.messages < max_messages, "sizes ", a.size(), " and ", b.size(), ", ", cost.items_sent,
                    " sent so far, this message ", next->ranges.size(), " ranges");
    const auto wire = encode_cbor(encode_range_sync(*next));
    ++cost.messages;
    cost.bytes += wire.size();
    auto decoded = decode_cbor(wire);
    REQUIRE(decoded);
    auto parsed = parse_range_sync(*decoded, config);
    REQUIRE_MESSAGE(parsed.message, "message ", cost.messages, " refused: error ", static_cast<int>(parsed.error),
                    " with ", next->ranges.size(), " ranges, ", next->need.size(), " needed");
    auto& me = *sides[turn];
    auto& peer = *sides[1 - turn];
    auto step = range_sync_answer(me, *parsed.message, config);
    for (const auto& item : step.send) peer.insert(item);
    cost.items_sent += step.send.size();
    next = std::move(step.reply);
    turn = 1 - turn;
  }
  return cost;
}

// Items (ts, id 0) packed as a list or need string is on the wire.
json packed(std::initializer_list<std::uint64_t> timestamps) {
  std::vector<std::uint8_t> bytes;
  for (auto ts : timestamps) {
    const auto b = sync_item{ts, 0}.to_bytes();
    bytes.insert(bytes.end(), b.begin(), b.end());
  }
  return json::binary(std::move(bytes));
}

// Two indexes holding the same `n` random items.
void fill_equal(sync_index& a, sync_index& b, std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i < n; ++i) {
    const auto item = random_item(rng, 1ull << 40);
    a.insert(item);
    b.insert(item);
  }
}

std::vector<sync_item> all_items(const sync_index& index) {
  std::vector<sync_item> out;
  index.items(0, index.size(), out);
  return out;
}

}  // namespace

TEST_CASE("sync_index: rank, at, items and range fingerprints match a sorted set under random inserts and erases") {
  std::mt19937_64 rng(7);
  sync_index index(11);
  std::set<sync_item> ref;
  for (int round = 0; round < 20'000; ++round) {
    const auto item = random_item(rng, 500);
    if (rng() % 3 == 0 && !ref.empty()) {
      // Erase an existing item (or a missing one, now and then).
      auto it = ref.lower_bound(item);
      if (it == ref.end()) it = ref.begin();
      CHECK(index.erase(*it) == true);
      ref.erase(it);
      CHECK(index.erase(sync_item{~0ull, ~0ull}) == ref.contains(sync_item{~0ull, ~0ull}));
    } else {
      CHECK(index.insert(item) == ref.insert(item).second);
    }
  }
  REQUIRE(index.size() == ref.size());
  const std::vector<sync_item> sorted(ref.begin(), ref.end());
  CHECK(all_items(index) == sorted);
  for (int q = 0; q < 2'000; ++q) {
    const auto probe = random_item(rng, 500);
    const auto expected = static_cast<std::size_t>(std::lower_bound(sorted.begin(), sorted.end(), probe) - sorted.begin());
    CHECK(index.rank(probe) == expected);
    const auto k = static_cast<std::size_t>(rng() % sorted.size());
    CHECK(index.at(k) == sorted[k]);
    auto from = static_cast<std::size_t>(rng() % (sorted.size() + 1));
    auto to = static_cast<std::size_t>(rng() % (sorted.size() + 1));
    if (from > to) std::swap(from, to);
    CHECK(index.fingerprint_of(from, to) == brute_fingerprint(sorted, from, to));
    std::vector<sync_item> some;
    index.items(from, to, some);
    CHECK(some == std::vector<sync_item>(sorted.begin() + static_cast<std::ptrdiff_t>(from),
                                         sorted.begin() + static_cast<std::ptrdiff_t>(to)));
  }
  CHECK_THROWS_AS((void)index.at(index.size()), std::out_of_range);
  // The extreme item can go in and out.
  const sync_item top{~0ull, ~0ull};
  CHECK(index.insert(top));
  CHECK(index.at(index.size() - 1) == top);
  CHECK(index.erase(top));
  CHECK_FALSE(index.contains(top));
}

TEST_CASE("sync_key_id hashed in pieces equals SipHash of the assembled id, key and writer lengths around block edges") {
  // The definition: SipHash-2-4 under the fixed public key of the key's
  // length (8 bytes, little-endian), the key, then the writer. Hashed in
  // pieces, the key and the writer may start and end anywhere in a block.
  const siphash_key id_key{0x62617272656c5f70ull, 0x32705f6b65795f69ull};
  for (std::size_t k = 0; k <= 40; ++k)
    for (std::size_t w : {0, 1, 2, 7, 8, 9, 15, 16, 17, 300}) {
      std::string key, writer;
      for (std::size_t i = 0; i < k; ++i) key += static_cast<char>('a' + (i * 7) % 26);
      for (std::size_t i = 0; i < w; ++i) writer += static_cast<char>('A' + (i * 5) % 26);
      std::string assembled(8, '\0');
      for (int i = 0; i < 8; ++i) assembled[i] = static_cast<char>(static_cast<std::uint64_t>(k) >> (8 * i));
      assembled += key + writer;
      CHECK(sync_key_id(key, writer) == siphash24(id_key, assembled));
    }
}

TEST_CASE("sync_key_id tells keys and writers apart, the same on every node") {
  CHECK(sync_key_id("ab", "c") != sync_key_id("a", "bc"));
  CHECK(sync_key_id("k", "n1") != sync_key_id("k", "n2"));
  CHECK(sync_key_id("k", "") != sync_key_id("k", "n1"));
  CHECK(sync_key_id("k", "n1") == sync_key_id("k", "n1"));
  // Fixed: a value computed here must match every other node's (and
  // every build's), so ids and item hashes are pinned.
  CHECK(sync_key_id("", "") == 12737803176652581091ull);
  CHECK(sync_key_id("user:7", "n1") == 17745434276778149023ull);
  // Long ids too (pinned when ids up to 256 bytes were assembled on the
  // stack and longer ones on the heap; now both are hashed in pieces).
  CHECK(sync_key_id(std::string(248, 'k'), "") == 8008058225125974426ull);
  CHECK(sync_key_id(std::string(300, 'k'), "n1") == 15446448046055782772ull);
  CHECK(fingerprint::of({1, 2}) == fingerprint{1, 14179618294641549977ull, 14819987592256420047ull});
  const sync_item i{0x0102030405060708ull, 0x1112131415161718ull};
  const auto bytes = i.to_bytes();
  CHECK(bytes[0] == 0x01);
  CHECK(bytes[15] == 0x18);
  CHECK(sync_item::from_bytes(bytes) == i);
  CHECK_FALSE(sync_item::from_bytes(std::span<const std::uint8_t>(bytes.data(), 15)));
}

TEST_CASE("two equal sets settle in one message each way: a fingerprint and silence") {
  sync_index a(1), b(2);
  fill_equal(a, b, 50'000, 3);
  const auto cost = reconcile(a, b);
  CHECK(cost.messages == 1);
  CHECK(cost.items_sent == 0);
  MESSAGE("equal sets of 50,000: ", cost.messages, " message, ", cost.bytes, " bytes");
  CHECK(cost.bytes < 100);
}

TEST_CASE("property: random sets with random differences always reconcile to their union, in few messages") {
  std::mt19937_64 rng(20261130);
  for (int trial = 0; trial < 200; ++trial) {
    INFO("trial ", trial);
    sync_index a(rng()), b(rng());
    std::set<sync_item> want;
    // Shared items, then items on one side only; sometimes one side empty,
    // sometimes timestamps clustered so many items share one.
    const std::uint64_t ts_range = trial % 3 == 0 ? 8 : (1ull << 40);
    const auto shared = static_cast<std::size_t>(rng() % (trial % 5 == 0 ? 20 : 10'000));
    const auto only_a = static_cast<std::size_t>(trial % 7 == 0 ? 0 : rng() % (trial % 4 == 0 ? 3'000 : 30));
    const auto only_b = static_cast<std::size_t>(trial % 11 == 0 ? 0 : rng() % (trial % 6 == 0 ? 3'000 : 30));
    for (std::size_t i = 0; i < shared; ++i) {
      const auto item = random_item(rng, ts_range);
      a.insert(item);
      b.insert(item);
      want.insert(item);
    }
    for (std::size_t i = 0; i < only_a; ++i) {
      const auto item = random_item(rng, ts_range);
      a.insert(item);
      want.insert(item);
    }
    for (std::size_t i = 0; i < only_b; ++i) {
      const auto item = random_item(rng, ts_range);
      b.insert(item);
      want.insert(item);
    }
    const std::vector<sync_item> expected(want.begin(), want.end());
    range_sync_config config;
    if (trial % 5 == 4) {  // small messages: splitting must still make progress
      config.max_ranges = 40;
      config.branching = 4;
      config.list_threshold = 3;
    }
    // Depth of the split tree, twice (both sides split), plus the lists
    // and the data for what they show.
    const auto n = std::max<std::size_t>(want.size(), 2);
    const auto depth = static_cast<std::size_t>(std::ceil(std::log(double(n)) / std::log(double(config.branching))));
    const auto bound = config.max_ranges < 2048 ? 4000 : 2 * depth + 6;
    const auto lacked = 2 * want.size() - a.size() - b.size();  // |A\B| + |B\A|
    const auto cost = reconcile(a, b, config, bound);
    CHECK_MESSAGE(all_items(a) == expected, "trial ", trial);
    CHECK_MESSAGE(all_items(b) == expected, "trial ", trial);
    // Nothing is sent twice in one exchange, and nothing not missing.
    CHECK_MESSAGE(cost.items_sent == lacked, "trial ", trial, ": sent ", cost.items_sent, " for ", lacked);
  }
}

TEST_CASE("one difference among 100,000 items costs a few kB and a few messages") {
  sync_index a(5), b(6);
  fill_equal(a, b, 100'000, 9);
  const sync_item extra{(1ull << 40) + 5, 42};
  b.insert(extra);  // the newest write, on one side
  const auto cost = reconcile(a, b);
  CHECK(a.contains(extra));
  CHECK(cost.items_sent == 1);
  MESSAGE("one difference in 100,000: ", cost.messages, " messages, ", cost.bytes, " bytes");
  CHECK(cost.messages <= 10);
  CHECK(cost.bytes <= 16 * 1024);
}

TEST_CASE("an empty side gets everything in three messages") {
  sync_index a(1), empty(2);
  std::mt19937_64 rng(4);
  for (int i = 0; i < 10'000; ++i) a.insert(random_item(rng, 1ull << 40));
  const auto from_empty = reconcile(empty, a);
  CHECK(empty.size() == 10'000);
  CHECK(from_empty.items_sent == 10'000);
  MESSAGE("empty side starts: ", from_empty.messages, " messages, ", from_empty.bytes, " bytes");
  CHECK(from_empty.messages <= 3);
  sync_index other(3);
  const auto from_full = reconcile(a, other);
  CHECK(other.size() == 10'000);
  MESSAGE("full side starts: ", from_full.messages, " messages, ", from_full.bytes, " bytes");
  CHECK(from_full.messages <= 3);
}

TEST_CASE("parse_range_sync refuses what is not a well-formed message") {
  const auto item = [](std::uint64_t ts) { return packed({ts}); };
  const auto fp = json::binary(std::vector<std::uint8_t>(24, 0));
  CHECK(parse_range_sync(json{{"r", json::array()}}).message);
  CHECK(parse_range_sync(json{{"r", json::array({json::array({nullptr, 1, fp})})}}).message);
  const auto bad = [](const json& j) { return parse_range_sync(j).error; };
  CHECK(bad(json::array()) == range_sync_error::shape);
  CHECK(bad(json{{"x", 1}}) == range_sync_error::shape);
  CHECK(bad(json{{"r", json::array({json::array({nullptr, 3})})}}) == range_sync_error::shape);
  CHECK(bad(json{{"r", json::array({json::array({nullptr, 1})})}}) == range_sync_error::shape);  // no fingerprint
  CHECK(bad(json{{"r", json::array({json::array({nullptr, 1, json::binary({1, 2})})})}}) == range_sync_error::shape);
  // The last range must end at the end; only the last.
  CHECK(bad(json{{"r", json::array({json::array({item(5), 0})})}}) == range_sync_error::order);
  CHECK(bad(json{{"r", json::array({json::array({nullptr, 0}), json::array({nullptr, 0})})}}) ==
        range_sync_error::order);
  // Bounds must increase.
  CHECK(bad(json{{"r", json::array({json::array({item(5), 0}), json::array({item(5), 0}), json::array({nullptr, 0})})}}) ==
        range_sync_error::order);
  // A list item outside its range, or out of order.
  CHECK(bad(json{{"r", json::array({json::array({nullptr, 2, packed({9, 3})})})}}) == range_sync_error::order);
  CHECK(bad(json{{"r", json::array({json::array({item(5), 2, item(7)}), json::array({nullptr, 0})})}}) ==
        range_sync_error::order);
  CHECK(bad(json{{"r", json::array({json::array({nullptr, 2, json::binary({1, 2, 3})})})}}) == range_sync_error::shape);
  // Limits.
  range_sync_config small;
  small.max_ranges = 1;
  CHECK(parse_range_sync(json{{"r", json::array({json::array({item(5), 0}), json::array({nullptr, 0})})}}, small).error ==
        range_sync_error::too_large);
  small.max_need = 0;
  CHECK(parse_range_sync(json{{"r", json::array()}, {"w", item(1)}}, small).error == range_sync_error::too_large);
  range_sync_config one_item;
  one_item.max_ranges = 1;
  one_item.list_threshold = 1;
  CHECK(parse_range_sync(json{{"r", json::array({json::array({nullptr, 2, packed({1, 2})})})}}, one_item).error ==
        range_sync_error::too_large);
  CHECK(bad(json{{"r", json::array()}, {"w", 5}}) == range_sync_error::shape);
  // A need list asks for each item once, in order.
  CHECK(bad(json{{"r", json::array()}, {"w", packed({4, 4})}}) == range_sync_error::order);
}
