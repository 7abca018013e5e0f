#include "barrel_p2p/shared_bytes.hpp"

#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>

namespace barrel_p2p {

shared_bytes::header* shared_bytes::allocate(std::size_t size) {
  if (size > std::numeric_limits<std::uint32_t>::max()) throw std::length_error("shared_bytes: over 4 GiB");
  void* raw = ::operator new(sizeof(header) + size);
  return ::new (raw) header{{1}, static_cast<std::uint32_t>(size)};
}

shared_bytes::shared_bytes(std::span<const std::uint8_t> bytes) : block_(allocate(bytes.size())) {
  if (!bytes.empty()) std::memcpy(payload(block_), bytes.data(), bytes.size());
}

shared_bytes shared_bytes::zeroed(std::size_t size) {
  shared_bytes out;
  out.block_ = allocate(size);
  if (size) std::memset(payload(out.block_), 0, size);
  return out;
}

shared_bytes shared_bytes::concat(std::span<const std::uint8_t> first, std::span<const std::uint8_t> second) {
  shared_bytes out;
  out.block_ = allocate(first.size() + second.size());
  if (!first.empty()) std::memcpy(payload(out.block_), first.data(), first.size());
  if (!second.empty()) std::memcpy(payload(out.block_) + first.size(), second.data(), second.size());
  return out;
}

void shared_bytes::release() noexcept {
  if (!block_) return;
  // The last holder frees: acq_rel so every holder's reads happen before.
  if (block_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    block_->~header();
    ::operator delete(block_);
  }
  block_ = nullptr;
}

shared_bytes share_bytes(const std::vector<std::uint8_t>& bytes) { return shared_bytes(std::span<const std::uint8_t>(bytes)); }

}  // namespace barrel_p2p
