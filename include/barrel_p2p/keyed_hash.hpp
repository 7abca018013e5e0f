// Hashing of strings a peer chooses (map keys, node ids, broadcast origins)
// for the library's hash tables, keyed with a secret random per process.
//
// With a fixed hash function (std::hash), a member can compute thousands of
// keys that land in one bucket, and every insert and lookup in that bucket
// then costs time in proportion to their number: quadratic work for the
// node, from a few megabytes of writes. SipHash-2-4 (J.-P. Aumasson and
// D. J. Bernstein, "SipHash: a fast short-input PRF", INDOCRYPT 2012) under a
// key the peer does not know makes such collisions as hard to find as
// guessing the key. The key is drawn once per process from the OS.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace barrel_p2p {

using siphash_key = std::array<std::uint64_t, 2>;

/// SipHash-2-4 of `data` under `key` (k0, k1: the key's 16 bytes read as two
/// little-endian words).
[[nodiscard]] std::uint64_t siphash24(const siphash_key& key, std::string_view data) noexcept;

/// SipHash-2-4 of the 8 little-endian bytes of `word`.
[[nodiscard]] std::uint64_t siphash24(const siphash_key& key, std::uint64_t word) noexcept;

/// A fresh key from the OS (std::random_device).
[[nodiscard]] siphash_key random_siphash_key();

/// This process's random key (drawn on first use).
[[nodiscard]] const siphash_key& process_hash_key() noexcept;

/// Fixes the process key instead, before its first use (false if it was
/// drawn already). For the simulator only: hash tables iterate in key-hash
/// order, and some messages follow that order, so a run replays exactly
/// only with the same key. Call it first thing in main().
bool fix_process_hash_key(const siphash_key& key) noexcept;

/// The key that barrel-p2p-sim and the replayed test suites fix: the same
/// key in both, so that a run in a test and in the simulator hash alike.
inline constexpr siphash_key replay_hash_key{0x0706050403020100, 0x0f0e0d0c0b0a0908};

// The two hashers below are deliberately not noexcept: libstdc++ stores each
// node's hash code only for a hasher that may throw (or is known to be
// slow), and otherwise recomputes it for every node a lookup walks past in
// a bucket. SipHash is too slow to run again per probe (profiled: a third of
// a full sync's time was spent in bucket walks).

/// The same for tables keyed by peer-chosen 64-bit values (hashes a peer
/// can aim, such as sync_key_id).
struct keyed_word_hash {
  [[nodiscard]] std::size_t operator()(std::uint64_t v) const {
    return static_cast<std::size_t>(siphash24(process_hash_key(), v));
  }
};

/// std::hash's replacement for tables keyed by peer-chosen strings.
struct keyed_string_hash {
  [[nodiscard]] std::size_t operator()(std::string_view s) const {
    return static_cast<std::size_t>(siphash24(process_hash_key(), s));
  }
};

}  // namespace barrel_p2p
