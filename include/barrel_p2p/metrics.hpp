// Prometheus text exposition (format 0.0.4) of a node's counters and gauges.
//
// The writer groups samples by family, as the format requires: one
// `# HELP` / `# TYPE` header per metric name, then its samples. Every sample
// carries a `node` label so that several nodes scraped into one Prometheus
// (or living in one process) stay apart. The names are listed in
// docs/reference/metrics.md.
#pragma once

#include <cstdint>
#include <memory>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <string_view>
#include <utility>
#include <vector>

namespace barrel_p2p {

class node;
class map;

class prometheus_writer {
 public:
  using labels = std::vector<std::pair<std::string, std::string>>;
  enum class kind { counter, gauge };

  /// Starts the family `name` (a counter's name ends in `_total`).
  void family(std::string_view name, kind k, std::string_view help);
  /// One sample of the current family.
  void sample(const labels& l, double value);

  /// A family with a single sample (a node's counter or gauge).
  struct single {
    template <class V>
      requires std::is_arithmetic_v<V>
    single(std::string_view n, kind k, std::string_view h, V v) : name(n), what(k), help(h), value(static_cast<double>(v)) {}
    std::string_view name;
    kind what;
    std::string_view help;
    double value;
  };
  /// Writes each of `rows` as its own family, sampled once with `l`.
  void singles(const labels& l, std::initializer_list<single> rows);

  [[nodiscard]] const std::string& text() const noexcept { return out_; }

 private:
  std::string out_;
  std::string current_;
};

/// Writes the node's transport, membership and broadcast metrics, and
/// (write_map_metrics) for each map its size, entries, map counters and replica counters.
/// Call on the node's executor (node::get_executor()): it reads state that
/// lives there.
void write_node_metrics(prometheus_writer& w, node& n);
void write_map_metrics(prometheus_writer& w, const node& n,
                       const std::vector<std::shared_ptr<map>>& maps);

}  // namespace barrel_p2p
