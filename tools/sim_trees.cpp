#include "sim_trees.hpp"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <limits>
#include <queue>
#include <utility>

namespace barrel_p2p::sim {

std::vector<int> breadth_first(const adjacency& g, const std::vector<bool>& live, std::size_t from,
                               std::vector<std::size_t>* parent) {
  std::vector<int> dist(g.size(), -1);
  std::queue<std::size_t> q;
  dist[from] = 0;
  q.push(from);
  while (!q.empty()) {
    auto v = q.front();
    q.pop();
    for (auto w : g[v])
      if (live[w] && dist[w] < 0) {
        dist[w] = dist[v] + 1, q.push(w);
        if (parent) (*parent)[w] = v;
      }
  }
  return dist;
}

// Each node's farthest is one end of a diameter, so two breadth-first
// searches from the ends give every eccentricity.
double tree_avg_eccentricity(const adjacency& t, const std::vector<bool>& live) {
  const auto any = static_cast<std::size_t>(std::find(live.begin(), live.end(), true) - live.begin());
  if (any == live.size()) return 0;
  const auto farthest = [](const std::vector<int>& d) {
    return static_cast<std::size_t>(std::max_element(d.begin(), d.end()) - d.begin());
  };
  const auto da = breadth_first(t, live, farthest(breadth_first(t, live, any, nullptr)), nullptr);
  const auto db = breadth_first(t, live, farthest(da), nullptr);
  double sum = 0;
  std::size_t n = 0;
  for (std::size_t v = 0; v < live.size(); ++v)
    if (live[v]) sum += std::max(da[v], db[v]), ++n;
  return sum / static_cast<double>(n);
}

// The floor. Take a spanning tree T with diameter D. If D is even, T has a
// centre c and every node v is d_T(v,c) + D/2 from its farthest; if D is
// odd, a central edge (c1, c2), and v is min(d_T(v,c1), d_T(v,c2)) +
// (D+1)/2 from its farthest. D/2 rounded up is T's radius, at least the
// graph's (a tree's distances are never shorter than the graph's), and
// d_T(v,c) >= min(d(v,c), d(v,b)) for any neighbour b of c. So T's
// average eccentricity is at least the radius plus the least, over the
// graph's edges (a,b), mean of min(d(v,a), d(v,b)).
shared_tree_depth shared_tree_bounds(const adjacency& g, const std::vector<bool>& live) {
  std::vector<std::size_t> nodes, index(g.size());
  for (std::size_t i = 0; i < g.size(); ++i)
    if (live[i]) index[i] = nodes.size(), nodes.push_back(i);
  if (nodes.empty()) return {};
  const auto n = static_cast<double>(nodes.size());
  shared_tree_depth r;
  r.radius = INT_MAX;
  r.best_bfs_tree = std::numeric_limits<double>::infinity();
  // Every live pair's distance, a byte each (100 MB at 10,000 nodes): the
  // edges' terms then cost no more searches.
  std::vector<std::uint8_t> distance(nodes.size() * nodes.size());
  std::vector<std::size_t> parent(g.size());
  adjacency tree(g.size());
  for (auto root : nodes) {
    const auto d = breadth_first(g, live, root, &parent);
    int eccentricity = 0;
    auto* row = &distance[index[root] * nodes.size()];
    for (auto v : nodes) {
      if (d[v] < 0 || d[v] > UINT8_MAX) return {};  // not connected (or a path longer than any overlay's)
      eccentricity = std::max(eccentricity, d[v]);
      row[index[v]] = static_cast<std::uint8_t>(d[v]);
    }
    r.radius = std::min(r.radius, eccentricity);
    for (auto& adjacent : tree) adjacent.clear();
    for (auto v : nodes)
      if (v != root) tree[v].push_back(parent[v]), tree[parent[v]].push_back(v);
    if (const double e = tree_avg_eccentricity(tree, live); e < r.best_bfs_tree)
      r.best_bfs_tree = e, r.best_bfs_root = root;
  }
  double nearest_end = nodes.size() == 1 ? 0 : std::numeric_limits<double>::infinity();
  for (auto a : nodes)
    for (auto b : g[a]) {
      if (b < a || !live[b]) continue;
      const auto* da = &distance[index[a] * nodes.size()];
      const auto* db = &distance[index[b] * nodes.size()];
      std::uint64_t sum = 0;
      for (std::size_t v = 0; v < nodes.size(); ++v) sum += std::min(da[v], db[v]);
      nearest_end = std::min(nearest_end, static_cast<double>(sum) / n);
    }
  r.floor = r.radius + nearest_end;
  return r;
}

}  // namespace barrel_p2p::sim
