#include "barrel_p2p/scheduler.hpp"
#include "barrel_p2p/hlc.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace barrel_p2p {
namespace {

class real_scheduler final : public scheduler {
 public:
  explicit real_scheduler(executor ex) : ex_(std::move(ex)), start_(clock::now()) {}

  executor get_executor() const override { return ex_; }
  duration now() const override {
    return std::chrono::duration_cast<duration>(clock::now() - start_);
  }
  std::uint64_t wall_ms() const override { return hlc_clock::system_wall_ms(); }
  task<bool> sleep(duration d) override {
    boost::asio::steady_timer timer(ex_, d);
    auto [ec] = co_await timer.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    co_return !ec;
  }

 private:
  using clock = std::chrono::steady_clock;
  executor ex_;
  clock::time_point start_;
};

}  // namespace

std::unique_ptr<scheduler> make_real_scheduler(executor ex) {
  return std::make_unique<real_scheduler>(std::move(ex));
}

duration jittered(duration base, double spread, random_engine& rng) {
  std::uniform_real_distribution<double> factor(1.0 - spread, 1.0 + spread);
  return duration(static_cast<duration::rep>(static_cast<double>(base.count()) * factor(rng)));
}

}  // namespace barrel_p2p
