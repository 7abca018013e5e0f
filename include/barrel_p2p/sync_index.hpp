// The items of a replicated state in the order range-based reconciliation
// compares them (range_sync.hpp), with the fingerprint of any range in
// O(log n).
//
// An item stands for one key's current entry: the packed HLC of its winning
// write or tombstone, and an id hashing the key with the entry's writer. Two
// nodes hold the same item exactly when they hold the same version of the
// key. Items are ordered by (timestamp, id), so recent writes sit together
// at the end, where differences usually are.
//
// The index is a treap (a binary search tree balanced by random
// priorities, Seidel and Aragon 1996) whose nodes carry the count and the
// hash sums of their subtree: a range's fingerprint is two prefix sums,
// each one walk from the root. Pure: no I/O, no clock. Not thread-safe: one
// owner (the map's strand) updates and reads it.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace barrel_p2p {

struct sync_item {
  std::uint64_t ts = 0;  ///< hlc_timestamp::pack() of the entry's write or tombstone
  std::uint64_t id = 0;  ///< sync_key_id(key, writer)
  friend constexpr auto operator<=>(const sync_item&, const sync_item&) = default;

  /// 16 bytes big-endian (ts, then id): byte order is item order.
  static constexpr std::size_t binary_size = 16;
  [[nodiscard]] std::array<std::uint8_t, binary_size> to_bytes() const noexcept;
  /// nullopt unless exactly 16 bytes.
  [[nodiscard]] static std::optional<sync_item> from_bytes(std::span<const std::uint8_t> bytes) noexcept;
};

/// The id of a key's entry: SipHash-2-4 of the key and the writer's node id
/// (empty for a tombstone) under a fixed, public key, so every node computes
/// the same. Not a secret, and 64 bits: a member can find two (key, writer)
/// pairs with one id (about 2^32 tries), or pick entries whose range sums
/// match. Entries that collide are not told apart by reconciliation; they
/// still travel by broadcast. An honest cluster meets a collision with
/// probability about n^2 / 2^65 for n entries.
[[nodiscard]] std::uint64_t sync_key_id(std::string_view key, std::string_view writer) noexcept;

/// What two sides compare for a range: the number of items and two sums
/// (mod 2^64) of independent 64-bit hashes of them. Equal sets give equal
/// fingerprints; unequal ones collide with probability about 2^-128 for
/// honest data.
struct fingerprint {
  std::uint64_t count = 0;
  std::uint64_t sum_a = 0;
  std::uint64_t sum_b = 0;
  friend constexpr bool operator==(const fingerprint&, const fingerprint&) = default;

  void add(const sync_item& item) noexcept;
  [[nodiscard]] fingerprint plus(const fingerprint& other) const noexcept;
  [[nodiscard]] fingerprint minus(const fingerprint& other) const noexcept;
  /// One item alone.
  [[nodiscard]] static fingerprint of(const sync_item& item) noexcept;
};

class sync_index {
 public:
  sync_index();
  explicit sync_index(std::uint64_t seed);  // the treap's priorities (tests)

  /// Inserts `item` with `ref`, what the item stands for to its owner (the
  /// OR-Map keeps its key there; null when the owner needs nothing). False
  /// when the item was there already: its ref is kept.
  bool insert(const sync_item& item, const void* ref = nullptr);
  /// The ref an item was inserted with (or last given), or nullptr when the
  /// item is absent (or was inserted without one).
  [[nodiscard]] const void* find(const sync_item& item) const noexcept;
  /// Gives a present item another ref; false when the item is absent.
  bool set_ref(const sync_item& item, const void* ref) noexcept;
  /// False when the item was not there.
  bool erase(const sync_item& item);
  [[nodiscard]] bool contains(const sync_item& item) const;
  [[nodiscard]] std::size_t size() const noexcept { return size_of(root_); }
  void clear();

  /// The number of items less than `bound` (its position if inserted).
  [[nodiscard]] std::size_t rank(const sync_item& bound) const;
  /// The item at position `k` (0-based); precondition k < size().
  [[nodiscard]] sync_item at(std::size_t k) const;
  /// The fingerprint of the items at positions [from, to).
  [[nodiscard]] fingerprint fingerprint_of(std::size_t from, std::size_t to) const;
  /// Appends the items at positions [from, to) to `out`, in order.
  void items(std::size_t from, std::size_t to, std::vector<sync_item>& out) const;

 private:
  static constexpr std::uint32_t none = 0xffffffffu;
  // 72 bytes: the index is kept beside every entry of a map, so each
  // field is as narrow as it can be. The fingerprints are stored as their
  // two sums (an item's own count is 1; a subtree's fits 32 bits, as the
  // node indices do).
  struct node {
    sync_item item;
    const void* ref;
    std::uint32_t left, right;
    std::uint32_t priority;
    std::uint32_t count;    // items in the subtree rooted here
    std::uint64_t own_a, own_b;  // the item alone (hashed once, at insert)
    std::uint64_t sub_a, sub_b;  // the subtree rooted here
  };
  [[nodiscard]] static fingerprint own_of(const node& x) noexcept { return {1, x.own_a, x.own_b}; }
  [[nodiscard]] static fingerprint sub_of(const node& x) noexcept { return {x.count, x.sub_a, x.sub_b}; }
  static void set_sub(node& x, const fingerprint& f) noexcept {
    x.count = static_cast<std::uint32_t>(f.count);
    x.sub_a = f.sum_a;
    x.sub_b = f.sum_b;
  }
  [[nodiscard]] std::uint32_t find_node(const sync_item& item) const noexcept;
  std::vector<node> nodes_;
  std::vector<std::uint32_t> free_;
  std::uint32_t root_ = none;
  std::uint64_t rng_;

  [[nodiscard]] std::size_t size_of(std::uint32_t n) const noexcept {
    return n == none ? 0 : static_cast<std::size_t>(nodes_[n].count);
  }
  void update(std::uint32_t n) noexcept;
  // Splits `t` into items < key and items >= key.
  void split(std::uint32_t t, const sync_item& key, std::uint32_t& lo, std::uint32_t& hi);
  std::uint32_t merge(std::uint32_t a, std::uint32_t b);
  [[nodiscard]] fingerprint prefix(std::size_t k) const;  // of the first k items
  void collect(std::uint32_t n, std::size_t from, std::size_t to, std::size_t offset,
               std::vector<sync_item>& out) const;
};

}  // namespace barrel_p2p
