// barrel-p2p-sim: runs N nodes of the real membership, broadcast and replica
// code over the simulated network, on virtual time, deterministic from a
// seed. Each scenario prints JSON lines (one per measurement) and a summary
// table. Same seed, same output (wall-clock figures go to stderr).
//
//   barrel-p2p-sim --scenario form|fail|steady|churn|partition [--nodes N] [--seed S]
//   barrel-p2p-sim --scenario nemesis [--seeds A..B] [--nodes N] [--fault-seconds S] [--trace] [--sabotage]
//                  [--skip-faults K,...] [--shrink]
//                  [--broadcasts K] [--fail 10,20,...] [--jobs J] [--churn-per-s R] [--churn-seconds S]
//                  [--regions K] [--region-jitter F] [--cross-region-loss P] [--flaps-per-s R] [--flap-ms T]
//                  [tuning and bounds of the steady scenario: see docs/reference/simulator.md]
#include <barrel_p2p/keyed_hash.hpp>

#include "cli.hpp"
#include "sim_nemesis.hpp"
#include "sim_scenarios.hpp"

#include <chrono>
#include <iostream>

using namespace barrel_p2p;
using namespace barrel_p2p::sim;

int main(int argc, char** argv) {
  // Before anything hashes: runs replay only with the same hash-table order.
  if (!fix_process_hash_key(replay_hash_key))
    std::cerr << "barrel-p2p-sim: the hash key was drawn already: runs will not replay exactly\n";
  options o;
  cli::flag_reader args(argc, argv);
  auto value = [&] { return args.value(); };
  try {
    while (args.next()) {
      const auto& a = args.flag();
      if (a == "--scenario") o.scenario = value();
      else if (a == "--nodes") o.nodes = std::stoul(value()), o.nodes_given = true;
      else if (a == "--seeds") {
        const auto range = value();
        const auto dots = range.find("..");
        o.nemesis.first_seed = std::stoull(range.substr(0, dots));
        o.nemesis.last_seed = dots == std::string::npos ? o.nemesis.first_seed : std::stoull(range.substr(dots + 2));
        if (o.nemesis.last_seed < o.nemesis.first_seed) throw std::invalid_argument("--seeds A..B needs A <= B");
      } else if (a == "--trace") o.nemesis.trace = true;
      else if (a == "--sabotage") o.nemesis.sabotage = true;
      else if (a == "--shrink") o.nemesis.shrink = true;
      else if (a == "--skip-faults")
        for (auto k : cli::parse_list<std::size_t>(value())) o.nemesis.skip_faults.insert(k);
      else if (a == "--fault-seconds") o.nemesis.faulty = std::chrono::seconds(std::stoull(value()));
      else if (a == "--seed") o.seed = std::stoull(value());
      else if (a == "--broadcasts") o.broadcasts = std::stoul(value());
      else if (a == "--fail") o.fail_percents = cli::parse_list<int>(value());
      else if (a == "--jobs") o.jobs = std::stoul(value());
      else if (a == "--churn-per-s") o.churn_per_s = std::stod(value());
      else if (a == "--churn-seconds") o.churn_seconds = std::stoul(value());
      else if (a == "--random-promotion") o.random_promotion = std::stod(value());
      else if (a == "--graft-timeout-ms") o.graft_timeout_ms = std::stoull(value());
      else if (a == "--origins") o.origins = std::stoul(value());
      else if (a == "--loss") o.loss = std::stod(value());
      else if (a == "--trace-tree") o.trace_tree = true;
      else if (a == "--regions") o.regions = std::stoul(value());
      else if (a == "--region-jitter") o.region_jitter = std::stod(value());
      else if (a == "--cross-region-loss") o.cross_region_loss = std::stod(value());
      else if (a == "--flaps-per-s") o.flaps_per_s = std::stod(value());
      else if (a == "--flap-ms") o.flap_ms = std::stoull(value());
      else if (a == "--max-rmr") o.max_rmr = std::stod(value());
      else if (a == "--max-graft-prune") o.max_graft_prune = std::stod(value());
      else if (a == "--max-ldh") o.max_ldh = std::stoull(value());
      else if (a == "--max-ldh-mean") o.max_ldh_mean = std::stod(value());
      else if (a == "--min-complete") o.min_complete = std::stod(value());
      else if (a == "--max-connect-ms") o.max_connect_ms = std::stoull(value());
      else if (a == "--min-reliability") o.min_reliability = std::stod(value());
      else if (a == "--max-converge-ms") o.max_converge_ms = std::stoull(value());
      else if (a == "--gap-ms") o.gap_ms = std::stoull(value());
      else if (a == "--jitter-ms") o.jitter_ms = std::stoull(value());
      else if (a == "--graft-jitter") o.graft_jitter = std::stod(value());
      else if (a == "--prune-after") o.prune_after = static_cast<std::uint32_t>(std::stoul(value()));
      else if (a == "--prune-span-lags") o.prune_span_lags = std::stod(value());
      else if (a == "--prune-grace-ms") o.prune_grace_ms = std::stoull(value());
      else if (a == "--fetch-answers-join-tree") o.fetch_answers_join_tree = value() == "1";
      else if (a == "--origin-copies-end-runs") o.origin_copies_end_runs = value() == "1";
      else if (a == "--origin-prune-after") o.origin_prune_after = static_cast<std::uint32_t>(std::stoul(value()));
      else if (a == "--origin-prune-span-lags") o.origin_prune_span_lags = std::stod(value());
      else if (a == "--optimization-threshold") o.optimization_threshold = std::stoull(value());
      else if (a == "--optimization-interval-ms") o.optimization_interval_ms = std::stoull(value());
      else if (a == "--optimization-mean-hops") o.optimization_mean_hops = std::stod(value());
      else if (a == "--optimization-samples") o.optimization_samples = static_cast<std::uint32_t>(std::stoul(value()));
      else if (a == "--lazy-new-links") o.lazy_new_links = value() == "1";
      else if (a == "--flood-after-graft") o.flood_after_graft = value() == "1";
      else if (a == "--adaptive-graft") o.adaptive_graft = value() == "1";
      else if (a == "--repair-graft-ms") o.repair_graft_ms = std::stoull(value());
      else {
        std::cerr << "usage: barrel-p2p-sim --scenario form|fail|steady|churn|partition [--nodes N] [--seed S]"
                     " [--broadcasts K] [--fail 10,20,...] [--jobs J] [--churn-per-s R] [--churn-seconds S]\n"
                     "                      [--random-promotion P] [--graft-timeout-ms T] [--graft-jitter F]\n"
                     "                      [--prune-after N] [--prune-span-lags F] [--prune-grace-ms MS] [--fetch-answers-join-tree 0|1] [--origin-copies-end-runs 0|1] [--origin-prune-after N]\n"
                     "                      [--origin-prune-span-lags F] [--lazy-new-links 0|1] [--repair-graft-ms T]\n"
                     "                      [--flood-after-graft 0|1] [--adaptive-graft 0|1] [--optimization-threshold H]\n"
                     "                      [--optimization-interval-ms T] [--optimization-mean-hops H]\n"
                     "                      [--optimization-samples N] [--origins K] [--gap-ms T]\n"
                     "                      [--jitter-ms J] [--loss P] [--trace-tree]\n"
                     "                      [--regions K] [--region-jitter F] [--cross-region-loss P]\n"
                     "                      [--flaps-per-s R] [--flap-ms T]\n"
                     "                      [--max-rmr R] [--max-ldh L] [--max-ldh-mean L] [--max-graft-prune G]\n"
                     "                      [--min-complete C]\n"
                     "                      [--max-connect-ms T] [--min-reliability R] [--max-converge-ms T]\n"
                     "       barrel-p2p-sim --scenario nemesis [--seeds A..B] [--nodes N] [--fault-seconds S] [--trace] [--sabotage]\n"
                     "                      [--skip-faults K,...] [--shrink]\n";
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "barrel-p2p-sim: " << e.what() << '\n';
    return 2;
  }
  if (!(o.churn_per_s > 0 && o.churn_per_s <= 1000) || o.churn_seconds == 0) {
    std::cerr << "barrel-p2p-sim: --churn-per-s must be in (0, 1000], --churn-seconds positive\n";
    return 2;
  }
  {
    // The network model's flags: out of range, or given where they do nothing.
    const bool faults_apply = o.scenario == "steady" || o.scenario == "churn";
    const char* wrong = nullptr;
    if (o.regions > 5) wrong = "--regions must be 0..5";
    else if (!(o.region_jitter.value_or(0) >= 0 && o.region_jitter.value_or(0) <= 1) || !(o.cross_region_loss >= 0 && o.cross_region_loss <= 1))
      wrong = "--region-jitter and --cross-region-loss must be in [0, 1]";
    else if (!(o.flaps_per_s >= 0 && o.flaps_per_s <= 1000)) wrong = "--flaps-per-s must be in [0, 1000]";
    else if (o.flap_ms == 0 || o.flap_ms > 3'600'000) wrong = "--flap-ms must be 1..3600000";
    else if (o.regions == 0 && (o.region_jitter || o.cross_region_loss > 0))
      wrong = "--region-jitter and --cross-region-loss need --regions";
    else if (o.regions > 0 && o.jitter_ms > 0) wrong = "--jitter-ms is the flat network's; with --regions use --region-jitter";
    else if (o.regions == 1 && o.cross_region_loss > 0) wrong = "--cross-region-loss needs two regions at least";
    else if (!faults_apply && (o.cross_region_loss > 0 || o.flaps_per_s > 0))
      wrong = "--cross-region-loss and --flaps-per-s apply to steady and churn only";
    if (wrong) {
      std::cerr << "barrel-p2p-sim: " << wrong << "\n";
      return 2;
    }
  }
  if (o.nodes < 2 || o.nodes > 60000) {
    std::cerr << "barrel-p2p-sim: --nodes must be 2..60000\n";
    return 2;
  }
  const auto wall0 = std::chrono::steady_clock::now();
  int rc = 2;
  if (o.scenario == "form") rc = scenario_form(o);
  else if (o.scenario == "fail") rc = scenario_fail(o);
  else if (o.scenario == "steady") rc = scenario_steady(o);
  else if (o.scenario == "churn") rc = scenario_churn(o);
  else if (o.scenario == "partition") rc = scenario_partition(o);
  else if (o.scenario == "nemesis") {
    auto n = o.nemesis;
    if (o.nodes_given) n.nodes = o.nodes;
    rc = sim::run_nemesis(n);
  }
  else std::cerr << "barrel-p2p-sim: unknown scenario " << o.scenario << '\n';
  const auto wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  std::cerr << "wall time " << fmt(wall) << " s\n";
  return rc;
}
