// SipHash-2-4 of several pieces as if they were one string, without
// assembling them: an id hashed from a fixed layout of fields (sync_key_id)
// needs no buffer, and so no allocation, whatever the fields' lengths.
// Defined in keyed_hash.cpp, beside the one-string form.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string_view>

#include "barrel_p2p/keyed_hash.hpp"

namespace barrel_p2p::detail {

/// Equal to siphash24(key, a + b + ...) for parts {a, b, ...}.
[[nodiscard]] std::uint64_t siphash24_concat(const siphash_key& key,
                                             std::initializer_list<std::string_view> parts) noexcept;

}  // namespace barrel_p2p::detail
