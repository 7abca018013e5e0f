// Checks on an overlay given each node's active view: symmetry and
// connectivity, used by the membership tests on TCP and on the simulator.
#pragma once

#include <barrel_p2p/hyparview.hpp>

#include <map>
#include <queue>
#include <set>
#include <string>
#include <vector>

namespace barrel_p2p::testing {

using overlay = std::map<std::string, std::set<std::string>>;  // node -> active view

template <class Nodes>  // range of pointers/refs to hyparview
overlay overlay_of(const Nodes& nodes) {
  overlay g;
  for (const auto* hv : nodes) {
    auto& s = g[hv->self().id];
    for (const auto& d : hv->active_view()) s.insert(d.id);
  }
  return g;
}

/// Pairs (a, b) where a has b active but b does not have a.
inline std::vector<std::pair<std::string, std::string>> asymmetric_edges(const overlay& g) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [a, peers] : g)
    for (const auto& b : peers) {
      auto it = g.find(b);
      if (it == g.end() || !it->second.contains(a)) out.emplace_back(a, b);
    }
  return out;
}

/// True when every node of `g` reaches every other through active views.
inline bool connected(const overlay& g) {
  if (g.empty()) return true;
  std::set<std::string> seen{g.begin()->first};
  std::queue<std::string> todo;
  todo.push(g.begin()->first);
  while (!todo.empty()) {
    auto n = todo.front();
    todo.pop();
    auto it = g.find(n);
    if (it == g.end()) continue;
    for (const auto& p : it->second)
      if (g.contains(p) && seen.insert(p).second) todo.push(p);
  }
  return seen.size() == g.size();
}

inline bool views_within(const overlay& g, std::size_t min_size, std::size_t max_size) {
  for (const auto& [n, peers] : g)
    if (peers.size() < min_size || peers.size() > max_size) return false;
  return true;
}

inline bool healthy(const overlay& g, std::size_t max_size) {
  return views_within(g, 1, max_size) && asymmetric_edges(g).empty() && connected(g);
}

}  // namespace barrel_p2p::testing
