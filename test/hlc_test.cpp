#include <barrel_p2p/hlc.hpp>

#include <doctest/doctest.h>

#include <random>

using namespace barrel_p2p;

namespace {
// A wall clock the test moves by hand.
struct manual_wall {
  std::uint64_t ms = 1'700'000'000'000;
  hlc_clock::wall_source source() {
    return [this] { return ms; };
  }
};
}  // namespace

TEST_CASE("now() is strictly increasing even when the wall clock stalls or goes back") {
  manual_wall wall;
  hlc_clock clock(wall.source());
  auto prev = clock.now();
  std::mt19937_64 rng(42);
  for (int i = 0; i < 10'000; ++i) {
    // The wall clock jumps around: forward, still, and backwards.
    wall.ms += static_cast<std::int64_t>(rng() % 5) - 2;
    auto t = clock.now();
    CHECK(t > prev);
    CHECK(t.wall_ms >= prev.wall_ms);
    prev = t;
  }
}

TEST_CASE("now() follows the physical clock when it is ahead") {
  manual_wall wall;
  hlc_clock clock(wall.source());
  auto a = clock.now();
  CHECK(a.wall_ms == wall.ms);
  CHECK(a.logical == 0);
  auto b = clock.now();
  CHECK(b.wall_ms == wall.ms);
  CHECK(b.logical == 1);
  wall.ms += 10;
  auto c = clock.now();
  CHECK(c == hlc_timestamp{wall.ms, 0});
}

TEST_CASE("update(remote) returns a timestamp greater than both and never moves back") {
  manual_wall wall;
  hlc_clock clock(wall.source());
  std::mt19937_64 rng(7);
  for (int i = 0; i < 5'000; ++i) {
    const auto before = clock.last();
    // Remote timestamps from the past and the (admissible) future.
    hlc_timestamp remote{wall.ms - 30'000 + rng() % 60'000,
                         static_cast<std::uint32_t>(rng() % 100)};
    auto t = clock.update(remote);
    CHECK(t > before);
    CHECK(t > remote);
    CHECK(clock.now() > t);
    wall.ms += rng() % 3;
  }
}

TEST_CASE("a remote timestamp beyond the maximum forward offset is refused, not absorbed") {
  manual_wall wall;
  hlc_clock clock(wall.source(), std::chrono::milliseconds(60'000));
  const auto before = clock.now();
  hlc_timestamp far{wall.ms + 60'001, 0};
  CHECK_FALSE(clock.admissible(far));
  CHECK_THROWS_AS(clock.update(far), hlc_offset_error);
  CHECK(clock.last() == before);  // nothing absorbed
  hlc_timestamp edge{wall.ms + 60'000, 5};
  CHECK(clock.admissible(edge));
  CHECK(clock.update(edge) > edge);
}

TEST_CASE("the logical counter carries into the wall part so pack() stays exact") {
  manual_wall wall;
  hlc_clock clock(wall.source());
  hlc_timestamp near_limit{wall.ms, hlc_timestamp::logical_limit - 1};
  auto a = clock.update(near_limit);
  CHECK(a.logical == hlc_timestamp::logical_limit);
  auto b = clock.now();
  CHECK(b == hlc_timestamp{wall.ms + 1, 0});
  CHECK(b.pack() > a.pack());
  // A timestamp with a logical part past the limit cannot be packed: refused.
  CHECK_FALSE(clock.admissible({wall.ms, hlc_timestamp::logical_limit + 1}));
}

TEST_CASE("total order, pack() and the binary form all agree") {
  std::mt19937_64 rng(99);
  auto random_ts = [&] {
    return hlc_timestamp{1'600'000'000'000 + rng() % 1000,
                         static_cast<std::uint32_t>(rng() % 4)};
  };
  for (int i = 0; i < 2'000; ++i) {
    auto a = random_ts();
    auto b = random_ts();
    CHECK(a.valid());
    CHECK((a < b) == (a.pack() < b.pack()));
    CHECK((a == b) == (a.pack() == b.pack()));
    CHECK(hlc_timestamp::unpack(a.pack()) == a);
    auto ab = a.to_bytes();
    auto bb = b.to_bytes();
    CHECK((a < b) == (ab < bb));
    CHECK(hlc_timestamp::from_bytes(ab) == a);
  }
}

TEST_CASE("binary form is 12 bytes big-endian and rejects other sizes") {
  hlc_timestamp t{0x0102030405060708ULL, 0x090a0b0c};
  auto bytes = t.to_bytes();
  for (std::size_t i = 0; i < bytes.size(); ++i) CHECK(bytes[i] == i + 1);
  CHECK_FALSE(hlc_timestamp::from_bytes(bytes).has_value());  // wall beyond 44 bits
  std::array<std::uint8_t, 11> short_form{};
  CHECK_FALSE(hlc_timestamp::from_bytes(short_form).has_value());
  std::array<std::uint8_t, 13> long_form{};
  CHECK_FALSE(hlc_timestamp::from_bytes(long_form).has_value());
}

TEST_CASE("pack() matches the documented layout") {
  hlc_timestamp t{1'700'000'000'123, 42};
  CHECK(t.pack() == ((std::uint64_t{1'700'000'000'123} << 20) | 42));
}

TEST_CASE("clocks exchanging messages keep causality") {
  // Two nodes with skewed wall clocks: every receive is after its send.
  manual_wall wa, wb;
  wb.ms -= 5'000;  // b's clock runs 5 s behind
  hlc_clock a(wa.source()), b(wb.source());
  std::mt19937_64 rng(3);
  for (int i = 0; i < 1'000; ++i) {
    auto sent = a.now();
    auto received = b.update(sent);
    CHECK(received > sent);
    auto reply = b.now();
    CHECK(a.update(reply) > reply);
    wa.ms += rng() % 2;
    wb.ms += rng() % 2;
  }
}
