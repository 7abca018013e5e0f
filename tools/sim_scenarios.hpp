// The scenarios of barrel-p2p-sim other than nemesis (sim_nemesis.hpp).
#pragma once

#include "sim_cluster.hpp"

namespace barrel_p2p::sim {

int scenario_form(const options& o);       ///< the overlay forms: shape and time to connect
int scenario_fail(const options& o);       ///< a share of nodes fails at once: broadcast reliability
int scenario_steady(const options& o);     ///< steady broadcasts: RMR, LDH, tree repairs
int scenario_churn(const options& o);      ///< crashes and joins at a rate: delivery under churn
int scenario_partition(const options& o);  ///< a split and its heal: replicas converge

}  // namespace barrel_p2p::sim
