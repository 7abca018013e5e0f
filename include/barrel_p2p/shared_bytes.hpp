// Immutable bytes shared by everyone who holds them, and slices of them.
//
// A broadcast payload is encoded once and then held by many: Plumtree's
// cache for its TTL, every peer's send queue, the frame a relay forwards.
// shared_bytes keeps the reference count, the length and the bytes in one
// allocation (a shared_ptr to a vector takes two, and 40 bytes more per
// payload: at 100,000 cached payloads that was a tenth of a map's memory).
// A byte_slice is 16 bytes: the owner and a 32-bit offset and length.
//
// Threading: the count is atomic, so copies may live on any thread; the
// bytes never change once shared (mutable_bytes() is for filling a buffer
// before anyone else holds it).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace barrel_p2p {

class shared_bytes {
 public:
  /// Null: no buffer (not the same as an empty one).
  shared_bytes() noexcept = default;
  /// A copy of `bytes`. Throws std::length_error past 4 GiB.
  explicit shared_bytes(std::span<const std::uint8_t> bytes);
  /// `size` bytes, zeroed, for the caller to fill through mutable_bytes()
  /// before sharing them.
  [[nodiscard]] static shared_bytes zeroed(std::size_t size);
  /// `first` followed by `second`, in one buffer.
  [[nodiscard]] static shared_bytes concat(std::span<const std::uint8_t> first, std::span<const std::uint8_t> second);

  shared_bytes(const shared_bytes& other) noexcept : block_(other.block_) {
    if (block_) block_->refs.fetch_add(1, std::memory_order_relaxed);
  }
  shared_bytes(shared_bytes&& other) noexcept : block_(std::exchange(other.block_, nullptr)) {}
  shared_bytes& operator=(shared_bytes other) noexcept {
    std::swap(block_, other.block_);
    return *this;
  }
  ~shared_bytes() { release(); }

  [[nodiscard]] const std::uint8_t* data() const noexcept { return block_ ? payload(block_) : nullptr; }
  [[nodiscard]] std::size_t size() const noexcept { return block_ ? block_->size : 0; }
  [[nodiscard]] bool empty() const noexcept { return size() == 0; }
  [[nodiscard]] std::span<const std::uint8_t> bytes() const noexcept { return {data(), size()}; }
  [[nodiscard]] const std::uint8_t* begin() const noexcept { return data(); }
  [[nodiscard]] const std::uint8_t* end() const noexcept { return data() + size(); }
  /// False when null.
  explicit operator bool() const noexcept { return block_ != nullptr; }

  /// Writable access for the only holder (filling a buffer from zeroed()
  /// before it is copied anywhere). Anyone else may already read the bytes
  /// once a copy exists: writing then is a data race.
  [[nodiscard]] std::span<std::uint8_t> mutable_bytes() noexcept { return {block_ ? payload(block_) : nullptr, size()}; }
  /// How many hold this buffer (0 when null); for tests.
  [[nodiscard]] std::uint32_t use_count() const noexcept {
    return block_ ? block_->refs.load(std::memory_order_relaxed) : 0;
  }

 private:
  struct header {
    std::atomic<std::uint32_t> refs;
    std::uint32_t size;
  };
  static std::uint8_t* payload(header* h) noexcept { return reinterpret_cast<std::uint8_t*>(h + 1); }
  static header* allocate(std::size_t size);
  void release() noexcept;

  header* block_ = nullptr;
};

/// Shares a copy of `bytes`: one allocation and one copy, whatever the
/// vector (the block holds the count and length beside the bytes, so a
/// vector's buffer cannot be adopted).
[[nodiscard]] shared_bytes share_bytes(const std::vector<std::uint8_t>& bytes);

/// A range of shared bytes that keeps its buffer alive: a layer keeps the
/// part of a received frame it needs (a broadcast payload) without a copy.
class byte_slice {
 public:
  byte_slice() = default;
  /// All of `owner`.
  explicit byte_slice(shared_bytes owner) noexcept
      : owner_(std::move(owner)), length_(static_cast<std::uint32_t>(owner_.size())) {}
  /// `part` must lie inside `owner`'s bytes.
  byte_slice(shared_bytes owner, std::span<const std::uint8_t> part) noexcept
      : owner_(std::move(owner)),
        offset_(static_cast<std::uint32_t>(part.data() - owner_.data())),
        length_(static_cast<std::uint32_t>(part.size())) {}

  [[nodiscard]] std::span<const std::uint8_t> bytes() const noexcept {
    return owner_.bytes().subspan(offset_, length_);
  }
  [[nodiscard]] std::size_t size() const noexcept { return length_; }
  [[nodiscard]] bool empty() const noexcept { return length_ == 0; }
  /// The first `n` bytes dropped (n <= size()).
  [[nodiscard]] byte_slice drop_front(std::size_t n) const noexcept { return {owner_, bytes().subspan(n)}; }
  /// `length` bytes from `offset` (offset + length <= size()).
  [[nodiscard]] byte_slice sub(std::size_t offset, std::size_t length) const noexcept {
    return {owner_, bytes().subspan(offset, length)};
  }

 private:
  shared_bytes owner_;
  std::uint32_t offset_ = 0;
  std::uint32_t length_ = 0;
};

}  // namespace barrel_p2p
