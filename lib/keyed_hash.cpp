#include "barrel_p2p/keyed_hash.hpp"

#include "siphash_concat.hpp"

#include <atomic>
#include <optional>

#include <random>

namespace barrel_p2p {
namespace {

constexpr std::uint64_t rotl(std::uint64_t x, int b) noexcept { return (x << b) | (x >> (64 - b)); }

struct sip_state {
  std::uint64_t v0, v1, v2, v3;
  void round() noexcept {
    v0 += v1;
    v1 = rotl(v1, 13);
    v1 ^= v0;
    v0 = rotl(v0, 32);
    v2 += v3;
    v3 = rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = rotl(v1, 17);
    v1 ^= v2;
    v2 = rotl(v2, 32);
  }
  void absorb(std::uint64_t m) noexcept {
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
};

std::uint64_t load_le(const unsigned char* p, std::size_t n) noexcept {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

// The initialisation constants spell "somepseudorandomlygeneratedbytes".
sip_state initial_state(const siphash_key& key) noexcept {
  return {key[0] ^ 0x736f6d6570736575ULL, key[1] ^ 0x646f72616e646f6dULL, key[0] ^ 0x6c7967656e657261ULL,
          key[1] ^ 0x7465646279746573ULL};
}

// The last block (`tail`: the 0-7 bytes left over) with the total length's
// low byte on top, then the finalisation rounds.
std::uint64_t finish(sip_state s, std::uint64_t tail, std::size_t total) noexcept {
  s.absorb(tail | (std::uint64_t{total & 0xff} << 56));
  s.v2 ^= 0xff;
  for (int r = 0; r < 4; ++r) s.round();
  return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

}  // namespace

std::uint64_t siphash24(const siphash_key& key, std::string_view data) noexcept {
  auto s = initial_state(key);
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const std::size_t n = data.size();
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) s.absorb(load_le(p + i, 8));
  return finish(s, load_le(p + i, n - i), n);
}

std::uint64_t detail::siphash24_concat(const siphash_key& key, std::initializer_list<std::string_view> parts) noexcept {
  auto s = initial_state(key);
  std::uint64_t block = 0;  // bytes carried over from one part to the next
  std::size_t carried = 0, total = 0;
  for (const auto part : parts) {
    const auto* p = reinterpret_cast<const unsigned char*>(part.data());
    const std::size_t n = part.size();
    total += n;
    std::size_t i = 0;
    for (; carried != 0 && i < n; ++i) {  // complete the block a part left open
      block |= std::uint64_t{p[i]} << (8 * carried);
      if (++carried == 8) {
        s.absorb(block);
        block = 0;
        carried = 0;
      }
    }
    for (; i + 8 <= n; i += 8) s.absorb(load_le(p + i, 8));
    for (; i < n; ++i) block |= std::uint64_t{p[i]} << (8 * carried++);
  }
  return finish(s, block, total);
}

std::uint64_t siphash24(const siphash_key& key, std::uint64_t word) noexcept {
  char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(word >> (8 * i));
  return siphash24(key, std::string_view(bytes, 8));
}

siphash_key random_siphash_key() {
  std::random_device os;
  auto word = [&] { return (std::uint64_t{os()} << 32) | os(); };
  return siphash_key{word(), word()};
}

namespace {
std::atomic<bool> key_drawn{false};
std::optional<siphash_key> fixed_key;  // set before the first draw, or never
}  // namespace

bool fix_process_hash_key(const siphash_key& key) noexcept {
  if (key_drawn.load()) return false;
  fixed_key = key;
  return true;
}

const siphash_key& process_hash_key() noexcept {
  static const siphash_key key = [] {
    key_drawn = true;
    return fixed_key ? *fixed_key : random_siphash_key();
  }();
  return key;
}

}  // namespace barrel_p2p
