// Persisted maps on failing disks: torn tails, crashes, a full disk,
// failed writes and fsyncs, and what comes back after a restart.
#include <barrel_p2p/map.hpp>
#include <barrel_p2p/sim_network.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

#include "cluster.hpp"

#include <atomic>
#include <algorithm>
#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <sys/mount.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace barrel_p2p;
using namespace barrel_p2p::testing;
using namespace std::chrono_literals;

namespace {

// Faults a test arms from its own thread; the store's writer thread reads them.
struct fault_switch {
  std::atomic<int> write_errno{0};
  std::atomic<int> fsync_errno{0};
  std::atomic<bool> torn{false};  // with write_errno: write half the bytes first
  std::atomic<int> writes_failed{0};

  disk_fault_hook hook() {
    return [this](disk_op op, std::size_t& bytes) {
      if (op == disk_op::fsync) return fsync_errno.load();
      const int e = write_errno.load();
      if (e != 0) {
        if (torn) bytes /= 2;
        ++writes_failed;
      }
      return e;
    };
  }
};

// The errno a put failed with (0 when it succeeded).
int put_errno(cluster<tcp_net>& c, map& m, const std::string& key, json value) {
  int code = 0;
  c.run([&]() -> task<> {
    try {
      co_await m.put(key, std::move(value));
    } catch (const std::system_error& e) {
      code = e.code().value();
    }
  });
  return code;
}

// Map "kv" on `n`, on disk, with `faults` injected into its writes.
std::shared_ptr<map> persisted_map(node& n, fault_switch& faults) {
  map_options o;
  o.persist = true;
  o.disk_faults = faults.hook();
  return map::open(n, "kv", o);
}

json recover(const std::filesystem::path& dir) {
  boost::asio::io_context io;
  map_store s(dir, io.get_executor(), {});
  return s.recovered();
}

}  // namespace

TEST_SUITE("storage") {

TEST_CASE("a log with a truncated or bit-flipped tail opens with the valid prefix") {
  const auto dir = temp_dir("torn");
  auto fill = [&] {
    std::filesystem::remove_all(dir);
    boost::asio::io_context io;
    map_store s(dir, io.get_executor(), {});
    for (int i = 0; i < 10; ++i) s.append("k" + std::to_string(i), value_entry{i, {"n", {1000u + i, 0}}});
    // (the destructor writes and fsyncs what is queued)
  };
  std::vector<std::string> logged;
  auto sink = [&](const std::string& l) { logged.push_back(l); };
  SUBCASE("truncated in the middle of the last record") {
    fill();
    std::filesystem::resize_file(dir / "log", std::filesystem::file_size(dir / "log") - 3);
    boost::asio::io_context io;
    map_store s(dir, io.get_executor(), sink);
    CHECK(s.recovered().size() == 9);
    CHECK(s.stats().torn_tails_dropped == 1);
    CHECK_FALSE(logged.empty());
  }
  SUBCASE("a flipped bit in the last record") {
    fill();
    {
      std::fstream f(dir / "log", std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(-2, std::ios::end);
      char c;
      f.read(&c, 1);
      c ^= 0x10;
      f.seekp(-2, std::ios::end);
      f.write(&c, 1);
    }
    boost::asio::io_context io;
    map_store s(dir, io.get_executor(), sink);
    CHECK(s.recovered().size() == 9);
    CHECK(s.recovered().contains("k8"));
    CHECK_FALSE(s.recovered().contains("k9"));
  }
  SUBCASE("garbage appended") {
    fill();
    {
      std::ofstream f(dir / "log", std::ios::app | std::ios::binary);
      f << "\xff\xff\xff\x7fgarbage";
    }
    boost::asio::io_context io;
    {
      map_store s(dir, io.get_executor(), sink);
      CHECK(s.recovered().size() == 10);
      // The bad tail was cut off: appending continues from the valid prefix.
      const auto seq = s.append("k10", value_entry{10, {"n", {2000, 0}}});
      bool durable = false;
      boost::asio::co_spawn(io, [&]() -> task<> {
        co_await s.durable(seq);
        durable = true;
      }, boost::asio::detached);
      io.run();
      CHECK(durable);
      CHECK(s.stats().fsyncs == 1);
    }
    map_store s(dir, io.get_executor(), {});
    CHECK(s.recovered().size() == 11);
  }
  {
    boost::asio::io_context io;
    map_store again(dir, io.get_executor(), {});
    CHECK(again.stats().torn_tails_dropped == 0);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("SIGKILL in the middle of a stream of puts: every put that returned is recovered") {
  const auto dir = temp_dir("kill");
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The child: one node, a persisted map, puts as fast as they return.
    ::close(fds[0]);
    boost::asio::io_context io;
    auto cfg = tcp_config("victim", dir);
    node n(io.get_executor(), cfg);
    boost::asio::co_spawn(io, [&]() -> task<> {
      co_await n.start();
      map_options o;
      o.persist = true;
      o.snapshot_every = 50;
      auto m = map::open(n, "kv", o);
      for (int i = 0;; ++i) {
        co_await m->put("k" + std::to_string(i), i);
        const std::string line = std::to_string(i) + "\n";
        if (::write(fds[1], line.data(), line.size()) < 0) ::_exit(3);
      }
    }, boost::asio::detached);
    io.run();
    ::_exit(2);
  }
  ::close(fds[1]);
  // Read acknowledgements until a few hundred puts have returned, then kill.
  std::string acked;
  int last = -1;
  char buf[4096];
  while (last < 300) {
    const auto got = ::read(fds[0], buf, sizeof buf);
    REQUIRE(got > 0);
    acked.append(buf, static_cast<std::size_t>(got));
    const auto end = acked.rfind('\n');
    if (end != std::string::npos) {
      const auto start = acked.rfind('\n', end - 1);
      last = std::stoi(acked.substr(start == std::string::npos ? 0 : start + 1, end));
    }
  }
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  ::close(fds[0]);
  CHECK(WIFSIGNALED(status));
  boost::asio::io_context io;
  map_store recovered(dir / "maps" / "kv", io.get_executor(), {});
  const auto& j = recovered.recovered();
  int missing = 0;
  for (int i = 0; i <= last; ++i) missing += !j.contains("k" + std::to_string(i));
  CHECK(missing == 0);
  MESSAGE("puts acknowledged before the kill: ", last + 1, ", entries recovered: ", j.size());
  std::filesystem::remove_all(dir);
}

TEST_CASE("64 concurrent persisted writers: every acknowledged put is recovered") {
  const auto root = temp_dir("group");
  std::size_t acknowledged = 0;
  {
    cluster<tcp_net> c;
    auto& n = c.add("g0", root);
    map_options o;
    o.persist = true;
    auto m = map::open(n, "kv", o);
    c.run([&]() -> task<> {
      std::size_t running = 64;
      for (int w = 0; w < 64; ++w)
        boost::asio::co_spawn(n.get_executor(), [&, w]() -> task<> {
          for (int i = 0; i < 10; ++i) {
            co_await m->put("w" + std::to_string(w) + "-" + std::to_string(i), i);
            ++acknowledged;
          }
          --running;
        }, boost::asio::detached);
      auto sched = make_real_scheduler(n.get_executor());
      while (running > 0) co_await sched->sleep(1ms);
    });
    c.stop_all();
  }
  CHECK(acknowledged == 640);
  boost::asio::io_context io;
  map_store s(root / "maps" / "kv", io.get_executor(), {});
  CHECK(s.recovered().size() == 640);
  std::filesystem::remove_all(root);
}

TEST_CASE("compaction folds the log into the snapshot off the executor; a segment it covers is never replayed") {
  const auto dir = temp_dir("compact");
  const auto value = [](int v, std::uint64_t wall) { return entry(value_entry{v, {"n", {wall, 0}}}); };
  boost::asio::io_context io;
  std::vector<std::uint8_t> first_segment;
  {
    map_store s(dir, io.get_executor(), {});
    for (int i = 0; i < 10; ++i) s.append("k" + std::to_string(i), value(i, 1000));
    s.compact();
    for (int i = 0; i < 5; ++i) s.append("k" + std::to_string(i), value(100 + i, 2000));
    boost::asio::co_spawn(io, s.flush(), boost::asio::detached);
    io.run();
    io.restart();
    // The compactor works on its own: wait for it (a generous limit).
    for (int i = 0; i < 5000 && s.stats().snapshots_written == 0; ++i) std::this_thread::sleep_for(1ms);
    CHECK(s.stats().snapshots_written == 1);
  }
  CHECK(std::filesystem::exists(dir / "snapshot"));
  CHECK_FALSE(std::filesystem::exists(dir / "log"));  // folded and deleted
  CHECK(std::filesystem::exists(dir / "log.1"));
  {
    map_store s(dir, io.get_executor(), {});
    CHECK(s.recovered().size() == 10);
    CHECK(s.recovered()["k0"]["v"] == 100);  // from log.1, after the snapshot
    CHECK(s.recovered()["k9"]["v"] == 9);    // from the snapshot
  }
  // A crash after the snapshot's rename but before the deletion leaves a
  // covered segment behind: it holds older values and must not be replayed.
  {
    std::ofstream f(dir / "log", std::ios::binary);
    const std::uint8_t stale[] = {0};  // any bytes: the file is skipped whole
    f.write(reinterpret_cast<const char*>(stale), sizeof stale);
  }
  {
    map_store s(dir, io.get_executor(), {});
    CHECK(s.recovered()["k0"]["v"] == 100);
    CHECK(s.stats().torn_tails_dropped == 0);
  }
  CHECK_FALSE(std::filesystem::exists(dir / "log"));
  std::filesystem::remove_all(dir);
}

// The log's file descriptor, found through /proc (the store does not expose it).
int open_fd_of(const std::filesystem::path& file) {
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec && target == file) return std::stoi(e.path().filename().string());
  }
  return -1;
}

TEST_CASE("a log that can no longer be cut back (/dev/full): the put fails, changes nothing, and the store takes no more writes") {
  const auto root = temp_dir("full");
  std::vector<std::string> logged;
  {
    cluster<tcp_net> c;
    auto& n = c.add("f0", root, [&](node_config& cfg) {
      cfg.log = [&](const std::string& line) { logged.push_back(line); };
    });
    map_options o;
    o.persist = true;
    auto m = map::open(n, "kv", o);
    c.run([&]() -> task<> { co_await m->put("before", 1); });
    // From now on every write to the log fails with ENOSPC, as on a full disk.
    const auto log_path = std::filesystem::canonical(root / "maps" / "kv" / "log");
    const int fd = open_fd_of(log_path);
    REQUIRE(fd >= 0);
    const int full = ::open("/dev/full", O_WRONLY);
    REQUIRE(full >= 0);
    REQUIRE(::dup2(full, fd) == fd);
    ::close(full);
    int failures = 0;
    c.run([&]() -> task<> {
      for (int i = 0; i < 2; ++i) {
        try {
          co_await m->put("after" + std::to_string(i), i);
        } catch (const std::system_error& e) {
          ++failures;
          CHECK(e.code().value() != 0);
        }
      }
    });
    CHECK(failures == 2);
    // Neither failed put was applied: a write is durable before it is visible.
    CHECK_FALSE(m->get("after0").has_value());
    CHECK_FALSE(m->get("after1").has_value());
    CHECK(m->counters().write_failures == 2);
    CHECK(m->counters().store_failed == 1);
    CHECK(std::any_of(logged.begin(), logged.end(),
                      [](const std::string& l) { return l.find("takes no more writes") != std::string::npos; }));
    c.stop_all();
  }
  boost::asio::io_context io;
  map_store s(root / "maps" / "kv", io.get_executor(), {});
  CHECK(s.recovered().contains("before"));
  CHECK_FALSE(s.recovered().contains("after0"));
  std::filesystem::remove_all(root);
}

TEST_CASE("a full disk refuses a put and changes nothing on any node; freed space takes writes again") {
  const auto root = temp_dir("enospc");
  fault_switch faults;
  {
    cluster<tcp_net> c;
    auto& a = c.add("a", root);
    auto& b = c.add("b");
    auto ma = persisted_map(a, faults);
    auto mb = map::open(b, "kv");
    CHECK(put_errno(c, *ma, "k1", 1) == 0);
    faults.write_errno = ENOSPC;
    CHECK(put_errno(c, *ma, "k2", 2) == ENOSPC);
    CHECK_FALSE(ma->get("k2").has_value());
    CHECK(ma->counters().write_failures == 1);
    CHECK(ma->counters().store_failed == 0);
    // Space again: the log was cut back, so the store goes on.
    faults.write_errno = 0;
    CHECK(put_errno(c, *ma, "k3", 3) == 0);
    REQUIRE(c.eventually([&] { return mb->get("k3") == json(3) && mb->get("k1") == json(1); }));
    // Let anti-entropy run a few rounds: k2 never reached anyone.
    c.run([&]() -> task<> { co_await a.sched().sleep(1500ms); });
    CHECK_FALSE(mb->get("k2").has_value());
    CHECK_FALSE(ma->get("k2").has_value());
    c.stop_all();
  }
  const auto j = recover(root / "maps" / "kv");
  CHECK(j.contains("k1"));
  CHECK(j.contains("k3"));
  CHECK_FALSE(j.contains("k2"));
  std::filesystem::remove_all(root);
}

TEST_CASE("a torn write is cut back: the records acknowledged after it survive a restart") {
  const auto dir = temp_dir("torn-write");
  fault_switch faults;
  boost::asio::io_context io;
  const auto value = [](int v) { return entry(value_entry{v, {"n", {1000u + static_cast<unsigned>(v), 0}}}); };
  std::vector<int> outcome;  // 0 durable, else the errno
  {
    map_store s(dir, io.get_executor(), {}, faults.hook());
    const auto wait = [&](std::uint64_t seq) {
      boost::asio::co_spawn(io, [&, seq]() -> task<> {
        try {
          co_await s.durable(seq);
          outcome.push_back(0);
        } catch (const std::system_error& e) {
          outcome.push_back(e.code().value());
        }
      }, boost::asio::detached);
      io.run();
      io.restart();
    };
    wait(s.append("k0", value(0)));
    faults.torn = true;
    faults.write_errno = EIO;
    wait(s.append("k1", value(1)));
    faults.write_errno = 0;
    wait(s.append("k2", value(2)));
    CHECK(s.stats().write_errors == 1);
    CHECK_FALSE(s.stats().failed);
  }
  CHECK(outcome == std::vector<int>{0, EIO, 0});
  CHECK(faults.writes_failed == 1);
  boost::asio::io_context again;
  map_store s(dir, again.get_executor(), {});
  CHECK(s.recovered().contains("k0"));
  CHECK_FALSE(s.recovered().contains("k1"));
  CHECK(s.recovered().contains("k2"));  // not cut off behind half a record
  CHECK(s.stats().torn_tails_dropped == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a failed fsync stops the store for good: later puts are refused, none is applied or gossiped") {
  const auto root = temp_dir("fsync");
  fault_switch faults;
  std::vector<std::string> logged;
  {
    cluster<tcp_net> c;
    auto& a = c.add("a", root, [&](node_config& cfg) {
      cfg.log = [&](const std::string& line) { logged.push_back(line); };
    });
    auto& b = c.add("b");
    auto ma = persisted_map(a, faults);
    auto mb = map::open(b, "kv");
    CHECK(put_errno(c, *ma, "before", 1) == 0);
    faults.fsync_errno = EIO;
    CHECK(put_errno(c, *ma, "lost", 2) == EIO);
    // The disk looks fine again, but pages may have been dropped: no trust.
    faults.fsync_errno = 0;
    CHECK(put_errno(c, *ma, "after", 3) == EIO);
    CHECK(ma->counters().write_failures == 2);
    CHECK(ma->counters().store_failed == 1);
    CHECK(std::any_of(logged.begin(), logged.end(),
                      [](const std::string& l) { return l.find("takes no more writes") != std::string::npos; }));
    REQUIRE(c.eventually([&] { return mb->get("before") == json(1); }));
    c.run([&]() -> task<> { co_await a.sched().sleep(1500ms); });
    CHECK_FALSE(mb->get("lost").has_value());
    CHECK_FALSE(ma->get("lost").has_value());
    CHECK_FALSE(mb->get("after").has_value());
    c.stop_all();
  }
  const auto j = recover(root / "maps" / "kv");
  CHECK(j.contains("before"));
  std::filesystem::remove_all(root);
}

TEST_CASE("a put waiting for its fsync does not outlive its store when the executor never runs again") {
  const auto dir = std::filesystem::temp_directory_path() / ("barrel_store_unrun_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::atomic<bool> release{false};
  bool frame_gone = false;
  {
    struct sentinel {
      bool* gone;
      ~sentinel() { *gone = true; }
    };
    boost::asio::io_context io;
    {
      // The writer holds its first write until released: the put below is
      // surely waiting when the store goes.
      map_store store(dir, io.get_executor(), {}, [&release](disk_op, std::size_t&) {
        while (!release) std::this_thread::sleep_for(1ms);
        return 0;
      });
      const auto seq = store.append("k", entry(tombstone{{1, 0}}));
      boost::asio::co_spawn(
          io,
          [&store, seq, gone = &frame_gone]() -> task<> {
            sentinel s{gone};
            co_await store.durable(seq);
          },
          boost::asio::detached);
      io.poll();  // up to the wait
      REQUIRE_FALSE(frame_gone);
      release = true;
    }  // the store writes, fsyncs and posts the outcome, which never runs
  }    // the executor goes unrun: the waiting frame must go with it
  CHECK(frame_gone);
  std::filesystem::remove_all(dir);
}

TEST_CASE("prune_on_peer_down removals stay removed after a restart") {
  const auto root = temp_dir("prune");
  {
    cluster<tcp_net> c;
    auto& a = c.add("a", root);
    auto& g = c.add("gone");
    map_options o;
    o.persist = true;
    o.prune_on_peer_down = true;
    auto ma = map::open(a, "presence", o);
    map_options po;
    po.prune_on_peer_down = true;
    auto mg = map::open(g, "presence", po);
    c.run([&]() -> task<> {
      co_await ma->put("a", "here");
      co_await mg->put("gone", "here");
    });
    REQUIRE(c.eventually([&] { return ma->get("gone").has_value(); }));
    mg.reset();
    c.run([&]() -> task<> { co_await g.stop(); });
    REQUIRE(c.eventually([&] { return !ma->get("gone").has_value(); }));
    c.stop_all();
  }
  const auto j = recover(root / "maps" / "presence");
  CHECK(j.contains("a"));
  CHECK_FALSE(j.contains("gone"));
  std::filesystem::remove_all(root);
}

TEST_CASE("records fold by the merge rules, not by their order in the log") {
  const auto dir = temp_dir("fold");
  boost::asio::io_context io;
  {
    map_store s(dir, io.get_executor(), {});
    // A local write is logged before it is merged; an older peer write to
    // the same key can be merged and logged while it waits for its fsync.
    s.append("k", value_entry{"newer", {"local", {2000, 0}}});
    s.append("k", value_entry{"older", {"peer", {1000, 0}}});
    // A prune replayed only while the write it dropped still wins.
    s.append("p", value_entry{"v1", {"gone", {1000, 0}}});
    s.append_drop("p", dot{"gone", {1000, 0}});
    s.append("q", value_entry{"v2", {"gone", {3000, 0}}});
    s.append_drop("q", dot{"gone", {1000, 0}});  // an older write's drop
    s.append("t", tombstone{{5000, 0}});
    s.append("t", value_entry{"stale", {"peer", {4000, 0}}});
  }
  const auto j = recover(dir);
  REQUIRE(j.contains("k"));
  REQUIRE(j.contains("q"));
  REQUIRE(j.contains("t"));
  CHECK(j["k"]["v"] == "newer");
  CHECK_FALSE(j.contains("p"));
  CHECK(j["q"]["v"] == "v2");
  CHECK(j["t"].contains("t"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("a log written before the CRC covered the length still opens") {
  const auto dir = temp_dir("legacy");
  std::filesystem::create_directories(dir);
  {
    json dots = json::array({json::array({"n", json::array({1000, 0})})});
    const json body = {{"k", "old"}, {"e", {{"v", 7}, {"d", dots}}}};
    const auto cbor = json::to_cbor(body);
    std::vector<std::uint8_t> rec;
    const auto u32 = [&](std::uint32_t v) {
      for (int i = 3; i >= 0; --i) rec.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    };
    u32(static_cast<std::uint32_t>(cbor.size()));
    u32(crc32(cbor));  // the body alone, as before
    rec.insert(rec.end(), cbor.begin(), cbor.end());
    std::ofstream f(dir / "log", std::ios::binary);
    f.write(reinterpret_cast<const char*>(rec.data()), static_cast<std::streamsize>(rec.size()));
  }
  boost::asio::io_context io;
  map_store s(dir, io.get_executor(), {});
  REQUIRE(s.recovered().contains("old"));
  CHECK(s.recovered()["old"]["v"] == 7);
  CHECK(s.stats().torn_tails_dropped == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a real full disk (a 1 MiB tmpfs): puts fail with ENOSPC and change nothing; every acknowledged put survives") {
  const auto mnt = temp_dir("tmpfs");
  std::filesystem::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0) {
    MESSAGE("skipped: cannot mount a tmpfs here (", std::strerror(errno), "); needs root");
    std::filesystem::remove_all(mnt);
    return;
  }
  const auto root = mnt / "node";
  std::vector<std::string> acknowledged;
  int enospc = 0;
  {
    cluster<tcp_net> c;
    auto& a = c.add("a", root);
    map_options o;
    o.persist = true;
    o.snapshot_every = 1'000'000;  // the log alone fills the disk
    auto m = map::open(a, "kv", o);
    // Take most of the room with a file we can delete later.
    {
      std::ofstream filler(mnt / "filler", std::ios::binary);
      const std::string chunk(64 * 1024, 'x');
      for (int i = 0; i < 12; ++i) filler << chunk;
    }
    const std::string value(8 * 1024, 'v');
    for (int i = 0; i < 200 && enospc == 0; ++i) {
      const auto key = "k" + std::to_string(i);
      const int e = put_errno(c, *m, key, value);
      if (e == 0) acknowledged.push_back(key);
      else if (e == ENOSPC) enospc = i;
      else FAIL("unexpected errno ", e);
    }
    REQUIRE(enospc > 0);
    CHECK_FALSE(m->get("k" + std::to_string(enospc)).has_value());
    CHECK(m->counters().store_failed == 0);
    std::filesystem::remove(mnt / "filler");
    CHECK(put_errno(c, *m, "after", value) == 0);
    acknowledged.push_back("after");
    c.stop_all();
  }
  const auto j = recover(root / "maps" / "kv");
  std::size_t missing = 0;
  for (const auto& k : acknowledged) missing += !j.contains(k);
  CHECK(missing == 0);
  CHECK_FALSE(j.contains("k" + std::to_string(enospc)));
  MESSAGE("puts acknowledged before the disk was full: ", enospc);
  ::umount2(mnt.c_str(), MNT_DETACH);
  std::filesystem::remove_all(mnt);
}

// A node whose clock jumped ahead acknowledges a write stamped in the
// future; it crashes and comes back with a correct clock. The write must
// survive the restart, and the node's next write to the key must win over
// it: recovery keeps its own entries however far ahead, and moves the HLC
// past them (the nemesis found the loss: seed 29).
TEST_CASE("storage: entries stamped ahead survive a restart, and later writes still win") {
  boost::asio::io_context io;
  sim_network net(io);
  const auto dir = temp_dir("ahead");
  auto make = [&](const std::string& id) {
    node_config c;
    c.transport.node_id = id;
    c.data_dir = dir;
    c.membership.seed = 1;
    c.log = [](const std::string&) {};
    return std::make_unique<node>(net, c);
  };
  map_options persisted;
  persisted.persist = true;
  auto run = [&](std::function<task<>()> body) {
    bool done = false;
    boost::asio::co_spawn(io, [&]() -> task<> {
      co_await body();
      done = true;
    }, boost::asio::detached);
    net.run_until([&] { return done; }, 60s);
    REQUIRE(done);
  };
  auto first = make("ahead");
  net.set_wall_skew("ahead", 120s);  // past the 60 s maximum offset
  auto m = map::open(*first, "m", persisted);
  run([&]() -> task<> { co_await m->put("k", json("from the future")); });
  const auto stamped = first->clock().last();
  m.reset();
  first.reset();  // a crash: no stop()

  auto second = make("ahead.1");  // a correct clock
  auto again = map::open(*second, "m", persisted);
  CHECK(again->get("k") == json("from the future"));
  CHECK(second->clock().last() >= stamped);  // its later timestamps come after the recovered one
  run([&]() -> task<> { co_await again->remove("k"); });
  CHECK_FALSE(again->get("k").has_value());  // the removal wins locally...
  again.reset();
  second.reset();
  auto third = make("ahead.2");
  auto last = map::open(*third, "m", persisted);
  CHECK_FALSE(last->get("k").has_value());  // ...and on disk
  last.reset();
  third.reset();
  std::filesystem::remove_all(dir);
}

}  // TEST_SUITE
