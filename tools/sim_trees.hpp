// Graph measures for the simulator: breadth-first distances over an
// overlay, and how shallow one broadcast tree shared by every origin can be.
// Free of the simulated cluster, so the test suite checks them on small
// graphs against every spanning tree.
#pragma once

#include <cstddef>
#include <vector>

namespace barrel_p2p::sim {

/// Undirected graph: node -> neighbours. Nodes whose `live` entry is false
/// are left out (so are links to them).
using adjacency = std::vector<std::vector<std::size_t>>;

/// Distances from `from` (-1: not reached); with `parent`, each reached
/// node's parent in the breadth-first tree (others untouched).
std::vector<int> breadth_first(const adjacency& g, const std::vector<bool>& live, std::size_t from,
                               std::vector<std::size_t>* parent);

/// A message's LDH on a tree is its origin's eccentricity there, so a shared
/// tree's mean LDH, origins uniform, is the tree's average eccentricity.
struct shared_tree_depth {
  /// Proven: no spanning tree of the graph has a smaller average
  /// eccentricity (its radius + the least mean distance to an edge's
  /// nearer end; sim_trees.cpp gives the argument).
  double floor = 0;
  /// Reached: the shallowest breadth-first tree, over every root.
  double best_bfs_tree = 0;
  std::size_t best_bfs_root = 0;
  int radius = 0;
};
/// Over every live node; all zero when the live nodes are not connected.
shared_tree_depth shared_tree_bounds(const adjacency& g, const std::vector<bool>& live);

/// The average eccentricity of tree `t` over its live nodes.
double tree_avg_eccentricity(const adjacency& t, const std::vector<bool>& live);

}  // namespace barrel_p2p::sim
