// libFuzzer target: the bytes of a persisted map's log segment or snapshot
// file, as recovery reads them after a crash or from a damaged disk. Any
// crash, sanitizer report or escaping exception is a bug; so is a fold that
// does not survive its own snapshot.
#include <barrel_p2p/cbor.hpp>
#include <barrel_p2p/crdt_wire.hpp>

#include "store_records.hpp"

#include <cstddef>
#include <cstdint>

using namespace barrel_p2p;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  ormap state;
  std::uint64_t records = 0;
  const auto good = detail::fold_log(bytes, state, &records);
  if (good > size) __builtin_trap();
  // The intact prefix folds to the same state again (recovery cuts the
  // tail and reopens): folding is idempotent.
  ormap again;
  if (detail::fold_log(bytes.first(good), again) != good) __builtin_trap();
  if (encode_cbor(crdt_wire::encode_map(again)) != encode_cbor(crdt_wire::encode_map(state))) __builtin_trap();
  // What was folded survives a compaction: written as a snapshot, read back.
  const auto snapshot = detail::snapshot_records(state, 7);
  ormap reread;
  std::uint64_t covered = 0;
  if (!detail::parse_snapshot(snapshot, reread, covered) || covered != 7) __builtin_trap();
  if (encode_cbor(crdt_wire::encode_map(reread)) != encode_cbor(crdt_wire::encode_map(state))) __builtin_trap();
  // And the input read as a snapshot file never crashes either.
  ormap as_snapshot;
  (void)detail::parse_snapshot(bytes, as_snapshot, covered);
  return 0;
}
