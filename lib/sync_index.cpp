#include "barrel_p2p/sync_index.hpp"

#include "barrel_p2p/keyed_hash.hpp"
#include "big_endian.hpp"
#include "siphash_concat.hpp"

#include <algorithm>
#include <random>
#include <stdexcept>
#include <string>

namespace barrel_p2p {

namespace {

// Fixed and public: every node must hash alike (see sync_key_id).
constexpr siphash_key id_key{0x62617272656c5f70ull, 0x32705f6b65795f69ull};    // "barrel_p2p_key_i"
constexpr siphash_key hash_a_key{0x62617272656c5f66ull, 0x696e6765725f6100ull}; // "barrel_finger_a"
constexpr siphash_key hash_b_key{0x62617272656c5f66ull, 0x696e6765725f6200ull}; // "barrel_finger_b"

std::uint64_t splitmix(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

using detail::get_be64;
using detail::put_be64;

}  // namespace

std::array<std::uint8_t, sync_item::binary_size> sync_item::to_bytes() const noexcept {
  std::array<std::uint8_t, binary_size> out{};
  put_be64(out.data(), ts);
  put_be64(out.data() + 8, id);
  return out;
}

std::optional<sync_item> sync_item::from_bytes(std::span<const std::uint8_t> bytes) noexcept {
  if (bytes.size() != binary_size) return std::nullopt;
  return sync_item{get_be64(bytes.data()), get_be64(bytes.data() + 8)};
}

std::uint64_t sync_key_id(std::string_view key, std::string_view writer) noexcept {
  // Length-prefixed, so ("ab", "c") and ("a", "bc") differ. Hashed in
  // pieces: no buffer to assemble, whatever the lengths.
  const auto n = static_cast<std::uint64_t>(key.size());
  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>(n >> (8 * i));
  return detail::siphash24_concat(id_key, {std::string_view(length, 8), key, writer});
}

fingerprint fingerprint::of(const sync_item& item) noexcept {
  const auto mixed = item.ts ^ siphash24(hash_a_key, item.id);
  return {1, siphash24(hash_a_key, mixed), siphash24(hash_b_key, mixed ^ item.id)};
}

void fingerprint::add(const sync_item& item) noexcept { *this = plus(of(item)); }

fingerprint fingerprint::plus(const fingerprint& other) const noexcept {
  return {count + other.count, sum_a + other.sum_a, sum_b + other.sum_b};
}

fingerprint fingerprint::minus(const fingerprint& other) const noexcept {
  return {count - other.count, sum_a - other.sum_a, sum_b - other.sum_b};
}

// The treap's priorities: random per process (as the hash key is), so no
// peer can aim for a degenerate tree; fixed with it in the simulator.
sync_index::sync_index() : sync_index(process_hash_key()[0] ^ std::uint64_t{0x5bd1e9955bd1e995}) {}
sync_index::sync_index(std::uint64_t seed) : rng_(seed) {}

void sync_index::clear() {
  nodes_.clear();
  free_.clear();
  root_ = none;
}

void sync_index::update(std::uint32_t n) noexcept {
  auto& x = nodes_[n];
  auto f = own_of(x);
  if (x.left != none) f = f.plus(sub_of(nodes_[x.left]));
  if (x.right != none) f = f.plus(sub_of(nodes_[x.right]));
  set_sub(x, f);
}

void sync_index::split(std::uint32_t t, const sync_item& key, std::uint32_t& lo, std::uint32_t& hi) {
  if (t == none) {
    lo = hi = none;
    return;
  }
  if (nodes_[t].item < key) {
    std::uint32_t l = none, h = none;
    split(nodes_[t].right, key, l, h);
    nodes_[t].right = l;
    update(t);
    lo = t;
    hi = h;
  } else {
    std::uint32_t l = none, h = none;
    split(nodes_[t].left, key, l, h);
    nodes_[t].left = h;
    update(t);
    lo = l;
    hi = t;
  }
}

std::uint32_t sync_index::merge(std::uint32_t a, std::uint32_t b) {
  if (a == none) return b;
  if (b == none) return a;
  if (nodes_[a].priority > nodes_[b].priority) {
    nodes_[a].right = merge(nodes_[a].right, b);
    update(a);
    return a;
  }
  nodes_[b].left = merge(a, nodes_[b].left);
  update(b);
  return b;
}

std::uint32_t sync_index::find_node(const sync_item& item) const noexcept {
  auto n = root_;
  while (n != none) {
    const auto& x = nodes_[n];
    if (item == x.item) return n;
    n = item < x.item ? x.left : x.right;
  }
  return none;
}

bool sync_index::contains(const sync_item& item) const { return find_node(item) != none; }

const void* sync_index::find(const sync_item& item) const noexcept {
  const auto n = find_node(item);
  return n == none ? nullptr : nodes_[n].ref;
}

bool sync_index::set_ref(const sync_item& item, const void* ref) noexcept {
  const auto n = find_node(item);
  if (n == none) return false;
  nodes_[n].ref = ref;
  return true;
}

bool sync_index::insert(const sync_item& item, const void* ref) {
  if (contains(item)) return false;
  if (nodes_.size() >= none - 1 && free_.empty()) throw std::length_error("sync_index: too many items");
  std::uint32_t n;
  if (!free_.empty()) {
    n = free_.back();
    free_.pop_back();
  } else {
    n = static_cast<std::uint32_t>(nodes_.size());
    nodes_.emplace_back();
  }
  const auto own = fingerprint::of(item);
  const auto priority = static_cast<std::uint32_t>(splitmix(rng_) >> 32);
  nodes_[n] = node{item, ref, none, none, priority, 1, own.sum_a, own.sum_b, own.sum_a, own.sum_b};
  // One walk down: the new node goes where its priority ranks it, and the
  // subtree it displaces is split around it. Each node passed on the way
  // gains the new item in its sums; no sibling is read (on a large index
  // every sibling read is a cache miss).
  std::uint32_t* link = &root_;
  while (*link != none && nodes_[*link].priority > priority) {
    auto& x = nodes_[*link];
    set_sub(x, sub_of(x).plus(own));
    link = item < x.item ? &x.left : &x.right;
  }
  std::uint32_t lo = none, hi = none;
  split(*link, item, lo, hi);
  nodes_[n].left = lo;
  nodes_[n].right = hi;
  update(n);
  *link = n;
  return true;
}

bool sync_index::erase(const sync_item& item) {
  const auto at = find_node(item);
  if (at == none) return false;
  // One walk down: each node passed loses the item from its sums, and the
  // item's node is replaced by the merge of its two subtrees (which keeps
  // the heap order: both sides rank below it).
  const auto own = own_of(nodes_[at]);
  std::uint32_t* link = &root_;
  while (*link != at) {
    auto& x = nodes_[*link];
    set_sub(x, sub_of(x).minus(own));
    link = item < x.item ? &x.left : &x.right;
  }
  *link = merge(nodes_[at].left, nodes_[at].right);
  free_.push_back(at);
  return true;
}

std::size_t sync_index::rank(const sync_item& bound) const {
  std::size_t r = 0;
  auto n = root_;
  while (n != none) {
    const auto& x = nodes_[n];
    if (x.item < bound) {
      r += size_of(x.left) + 1;
      n = x.right;
    } else {
      n = x.left;
    }
  }
  return r;
}

sync_item sync_index::at(std::size_t k) const {
  auto n = root_;
  while (n != none) {
    const auto& x = nodes_[n];
    const auto left = size_of(x.left);
    if (k < left) {
      n = x.left;
    } else if (k == left) {
      return x.item;
    } else {
      k -= left + 1;
      n = x.right;
    }
  }
  throw std::out_of_range("sync_index::at: position " + std::to_string(k) + " past the end");
}

fingerprint sync_index::prefix(std::size_t k) const {
  fingerprint f;
  auto n = root_;
  while (n != none && k > 0) {
    const auto& x = nodes_[n];
    const auto left = size_of(x.left);
    if (k <= left) {
      n = x.left;
      continue;
    }
    if (x.left != none) f = f.plus(sub_of(nodes_[x.left]));
    f = f.plus(own_of(x));
    k -= left + 1;
    n = x.right;
  }
  return f;
}

fingerprint sync_index::fingerprint_of(std::size_t from, std::size_t to) const {
  if (to <= from) return {};
  return prefix(to).minus(prefix(from));
}

void sync_index::collect(std::uint32_t n, std::size_t from, std::size_t to, std::size_t offset,
                         std::vector<sync_item>& out) const {
  // `offset`: the position of the subtree's first item.
  if (n == none || from >= to) return;
  const auto& x = nodes_[n];
  const auto left = size_of(x.left);
  const auto here = offset + left;
  if (from < here) collect(x.left, from, to, offset, out);
  if (from <= here && here < to) out.push_back(x.item);
  if (to > here + 1) collect(x.right, from, to, here + 1, out);
}

void sync_index::items(std::size_t from, std::size_t to, std::vector<sync_item>& out) const {
  collect(root_, from, std::min(to, size()), 0, out);
}

}  // namespace barrel_p2p
