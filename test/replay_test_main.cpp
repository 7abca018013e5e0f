// The main of test programs that replay exactly, as barrel-p2p-sim does:
// the process's hash key is fixed before anything hashes, so hash-table
// order, and with it every simulated run, is the same in each run of the
// program. (Elsewhere the key is random per process; see keyed_hash.hpp.)
#define DOCTEST_CONFIG_IMPLEMENT
#include <barrel_p2p/keyed_hash.hpp>

#include <doctest/doctest.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (!barrel_p2p::fix_process_hash_key(barrel_p2p::replay_hash_key))
    std::fprintf(stderr, "the hash key was drawn already: simulated runs will not replay exactly\n");
  return doctest::Context(argc, argv).run();
}
