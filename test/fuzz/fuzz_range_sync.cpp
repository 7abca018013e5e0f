// libFuzzer target: a range reconciliation message as a peer sends it
// (CBOR bytes) -> parse_range_sync -> an answer against a small index. Any
// crash, sanitizer report or escaping exception is a bug; so is a message
// accepted but not surviving encode -> parse, or an answer of ours that our
// own parser refuses (__builtin_trap).
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/range_sync.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

using namespace barrel_p2p;

namespace {

const sync_index& local_index() {
  static const sync_index index = [] {
    sync_index i(1);
    // Items at small timestamps, where fuzzed bounds often fall.
    for (std::uint64_t ts = 0; ts < 300; ++ts) i.insert({ts * 3, ts * 0x9e3779b97f4a7c15ull});
    return i;
  }();
  return index;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto j = decode_cbor(std::span<const std::uint8_t>(data, size), cbor_limits{6, 4096});
  if (!j) return 0;
  range_sync_config config;
  config.max_ranges = 256;
  auto parsed = parse_range_sync(*j, config);
  if (!parsed.message) return 0;
  // Accepted: it survives its wire form unchanged.
  auto again = parse_range_sync(encode_range_sync(*parsed.message), config);
  if (!again.message || encode_range_sync(*again.message) != encode_range_sync(*parsed.message)) __builtin_trap();
  // Our answer is a message our parser accepts, and everything we would
  // send is ours.
  const auto step = range_sync_answer(local_index(), *parsed.message, config);
  for (const auto& item : step.send)
    if (!local_index().contains(item)) __builtin_trap();
  if (step.reply) {
    auto reply = parse_range_sync(encode_range_sync(*step.reply), config);
    if (!reply.message) __builtin_trap();
  }
  return 0;
}
