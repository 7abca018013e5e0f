// shared_bytes and byte_slice: one allocation shared by count, slices that
// keep it alive, null distinct from empty.
#include <barrel_p2p/shared_bytes.hpp>

#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace barrel_p2p;

TEST_SUITE("transport") {

TEST_CASE("shared_bytes: null is not empty, and a copy shares the buffer") {
  shared_bytes null;
  CHECK_FALSE(null);
  CHECK(null.empty());
  CHECK(null.use_count() == 0);

  const std::vector<std::uint8_t> none;
  auto empty = share_bytes(none);
  CHECK(static_cast<bool>(empty));
  CHECK(empty.empty());

  const std::vector<std::uint8_t> source{1, 2, 3, 4};
  auto a = share_bytes(source);
  CHECK(a.size() == 4);
  CHECK(std::vector<std::uint8_t>(a.begin(), a.end()) == source);
  CHECK(a.data() != source.data());  // copied, not borrowed
  {
    auto b = a;
    CHECK(b.data() == a.data());
    CHECK(a.use_count() == 2);
    auto c = std::move(b);
    CHECK_FALSE(b);  // NOLINT(bugprone-use-after-move): moved-from is null by contract
    CHECK(a.use_count() == 2);
    c = a;  // same buffer: the count does not change
    CHECK(a.use_count() == 2);
  }
  CHECK(a.use_count() == 1);
  a = shared_bytes();
  CHECK_FALSE(a);
}

TEST_CASE("shared_bytes: zeroed, filled, concatenated; too large is refused before allocating") {
  auto z = shared_bytes::zeroed(3);
  CHECK(z.size() == 3);
  for (auto byte : z) CHECK(byte == 0);
  z.mutable_bytes()[1] = 7;
  CHECK(z.bytes()[1] == 7);

  const std::array<std::uint8_t, 2> head{9, 8};
  auto joined = shared_bytes::concat(head, z.bytes());
  CHECK(std::vector<std::uint8_t>(joined.begin(), joined.end()) == std::vector<std::uint8_t>{9, 8, 0, 7, 0});
  CHECK(shared_bytes::concat({}, {}).empty());

  CHECK_THROWS_AS((void)shared_bytes::zeroed(std::size_t{1} << 32), std::length_error);
}

TEST_CASE("byte_slice: 16 bytes, keeps its owner alive, and cuts within it") {
  static_assert(sizeof(byte_slice) == 16);
  byte_slice tail;
  {
    auto owner = share_bytes(std::vector<std::uint8_t>{10, 11, 12, 13, 14});
    byte_slice whole(owner);
    CHECK(whole.size() == 5);
    tail = whole.drop_front(2);
    CHECK(owner.use_count() == 3);
  }
  // The owner and the whole slice are gone; the tail still reads its bytes.
  REQUIRE(tail.size() == 3);
  CHECK(tail.bytes()[0] == 12);
  CHECK(tail.bytes()[2] == 14);
  auto mid = tail.sub(1, 1);
  CHECK(mid.size() == 1);
  CHECK(mid.bytes()[0] == 13);
  CHECK(tail.sub(3, 0).empty());
}

TEST_CASE("shared_bytes: copies released on several threads free the buffer once") {
  // Under ASan/TSan a wrong count shows as a double free or a race.
  auto shared = share_bytes(std::vector<std::uint8_t>(64, 1));
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([copy = shared, &wrong] {
      for (int i = 0; i < 10'000; ++i) {
        auto again = copy;
        if (again.size() != 64 || again.bytes()[63] != 1) ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(wrong.load() == 0);
  CHECK(shared.use_count() == 1);
}

}
