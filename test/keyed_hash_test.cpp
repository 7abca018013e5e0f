// SipHash-2-4 against the reference vectors, and the tables keyed by
// peer-chosen strings use it.
#include <barrel_p2p/keyed_hash.hpp>
#include <barrel_p2p/ormap.hpp>

#include <doctest/doctest.h>

#include <type_traits>

using namespace barrel_p2p;

namespace {

// The reference key 00 01 .. 0f and message 00 01 .. (n-1) of the SipHash
// paper's test vectors.
std::uint64_t reference(std::size_t n) {
  const siphash_key key{0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};
  std::string msg;
  for (std::size_t i = 0; i < n; ++i) msg += static_cast<char>(i);
  return siphash24(key, msg);
}

}  // namespace

TEST_CASE("siphash24: the reference vectors") {
  CHECK(reference(0) == 0x726fdb47dd0e0e31ULL);
  CHECK(reference(1) == 0x74f839c593dc67fdULL);
  CHECK(reference(8) == 0x93f5f5799a932462ULL);
  CHECK(reference(15) == 0xa129ca6149be45e5ULL);
}

TEST_CASE("keyed_string_hash: keyed per process; what the OR-Map's table hashes with") {
  const auto& key = process_hash_key();
  CHECK((key[0] | key[1]) != 0);
  CHECK(&key == &process_hash_key());  // drawn once
  const siphash_key other{key[0] ^ 1, key[1]};
  CHECK(siphash24(key, "user:42") != siphash24(other, "user:42"));
  CHECK(keyed_string_hash{}("user:42") == static_cast<std::size_t>(siphash24(key, "user:42")));
  static_assert(std::is_same_v<ormap::container::hasher, keyed_string_hash>);
}
