// Uses the public API the way an embedding application would.
#include <barrel_p2p/crdt_wire.hpp>
#include <barrel_p2p/hlc.hpp>
#include <barrel_p2p/ormap.hpp>

#include <iostream>

int main() {
  barrel_p2p::hlc_clock clock;
  barrel_p2p::ormap map;
  auto delta = map.add("greeting", "hello", "consumer", clock.now());
  barrel_p2p::ormap replica;
  auto result = barrel_p2p::crdt_wire::ingest(
      replica, barrel_p2p::crdt_wire::encode_map(delta), clock);
  if (result.changed.size() != 1 || replica.get("greeting") != "hello") {
    std::cerr << "consumer: replica did not receive the delta\n";
    return 1;
  }
  std::cout << "consumer: barrel_p2p works as a subproject\n";
  return 0;
}
