// The simulator's shared-tree measures (tools/sim_trees.hpp): the floor
// must hold for every spanning tree, and the best breadth-first tree must
// be one. Checked by enumerating every spanning tree of small graphs.
#include "sim_trees.hpp"

#include <doctest/doctest.h>

#include <bit>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

using namespace barrel_p2p::sim;

namespace {

using edge_list = std::vector<std::pair<std::size_t, std::size_t>>;

adjacency graph_of(std::size_t n, const edge_list& edges) {
  adjacency g(n);
  for (auto [a, b] : edges) g[a].push_back(b), g[b].push_back(a);
  return g;
}

// The least average eccentricity over every spanning tree (edge subsets of
// size n-1 without a cycle); infinity when there is none.
double shallowest_spanning_tree(std::size_t n, const edge_list& edges) {
  const std::vector<bool> live(n, true);
  double best = std::numeric_limits<double>::infinity();
  for (std::uint32_t mask = 0; mask < (1u << edges.size()); ++mask) {
    if (static_cast<std::size_t>(std::popcount(mask)) != n - 1) continue;
    std::vector<std::size_t> root(n);
    std::iota(root.begin(), root.end(), 0);
    const auto find = [&](std::size_t x) {
      while (root[x] != x) x = root[x] = root[root[x]];
      return x;
    };
    edge_list chosen;
    bool cycle = false;
    for (std::size_t e = 0; e < edges.size() && !cycle; ++e)
      if (mask >> e & 1) {
        const auto a = find(edges[e].first), b = find(edges[e].second);
        cycle = a == b;
        root[a] = b;
        chosen.push_back(edges[e]);
      }
    if (!cycle) best = std::min(best, tree_avg_eccentricity(graph_of(n, chosen), live));
  }
  return best;
}

}  // namespace

TEST_CASE("shared-tree bounds of graphs worked by hand") {
  SUBCASE("a ring of six: every spanning tree is a path, and the floor is exact") {
    const auto r = shared_tree_bounds(graph_of(6, {{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 5}, {5, 0}}),
                                      std::vector<bool>(6, true));
    CHECK(r.radius == 3);
    CHECK(r.floor == doctest::Approx(4.0));  // 3 + (0+0+1+1+2+2)/6
    CHECK(r.best_bfs_tree == doctest::Approx(4.0));  // (5+4+3+3+4+5)/6
  }
  SUBCASE("a star: the only tree, above the floor") {
    const auto r = shared_tree_bounds(graph_of(6, {{0, 1}, {0, 2}, {0, 3}, {0, 4}, {0, 5}}), std::vector<bool>(6, true));
    CHECK(r.radius == 1);
    CHECK(r.floor == doctest::Approx(1.0 + 4.0 / 6));
    CHECK(r.best_bfs_tree == doctest::Approx(11.0 / 6));
    CHECK(r.best_bfs_root == 0);
  }
  SUBCASE("dead nodes are left out") {
    // 0-1-2 live, 3 dead and linked to all: as the path of three.
    std::vector<bool> live{true, true, true, false};
    const auto r = shared_tree_bounds(graph_of(4, {{0, 1}, {1, 2}, {0, 3}, {1, 3}, {2, 3}}), live);
    CHECK(r.radius == 1);
    CHECK(r.best_bfs_tree == doctest::Approx(5.0 / 3));
    CHECK(r.floor == doctest::Approx(1.0 + 1.0 / 3));
  }
  SUBCASE("not connected: no figures") {
    const auto r = shared_tree_bounds(graph_of(4, {{0, 1}, {2, 3}}), std::vector<bool>(4, true));
    CHECK(r.floor == 0);
    CHECK(r.best_bfs_tree == 0);
  }
}

TEST_CASE("the shared-tree floor holds for every spanning tree of random small graphs") {
  std::mt19937 rng(7);
  int graphs = 0, exact = 0;
  for (int attempt = 0; attempt < 400 && graphs < 150; ++attempt) {
    const std::size_t n = 4 + rng() % 4;  // 4 to 7 nodes
    const double p = 0.3 + 0.6 * std::uniform_real_distribution<double>(0, 1)(rng);
    edge_list edges;
    for (std::size_t a = 0; a < n; ++a)
      for (std::size_t b = a + 1; b < n; ++b)
        if (std::uniform_real_distribution<double>(0, 1)(rng) < p) edges.emplace_back(a, b);
    const std::vector<bool> live(n, true);
    const auto r = shared_tree_bounds(graph_of(n, edges), live);
    const double shallowest = shallowest_spanning_tree(n, edges);
    if (shallowest == std::numeric_limits<double>::infinity()) {  // not connected
      CHECK(r.floor == 0);
      continue;
    }
    ++graphs;
    CAPTURE(n);
    CAPTURE(edges.size());
    CHECK(r.floor <= shallowest + 1e-9);
    CHECK(shallowest <= r.best_bfs_tree + 1e-9);  // a breadth-first tree is a spanning tree
    CHECK(r.floor > r.radius);                    // the mean distance term is not empty
    exact += r.floor > shallowest - 1e-9;
  }
  CHECK(graphs >= 100);
  MESSAGE(graphs << " connected graphs, the floor exact on " << exact);
  CHECK(exact > 0);
}
