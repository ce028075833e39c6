// The TCP rendezvous and its monitor (include/fathom/dist/rendezvous.hpp), with ranks as threads
// over localhost: rank 0's bytes reach every rank; a rank that exits, reports a failure, or falls
// behind while the others wait in a collective is named to every rank; a clean finish is not a
// fault. Also the launch environment (include/fathom/dist/launch.hpp).
#include "fathom/dist/rendezvous.hpp"

#include <atomic>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"

using namespace fathom;
using dist::LaunchEnv;
using dist::TcpRendezvous;

namespace {

// A port nothing listens on right now.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

LaunchEnv env_of(int rank, int world, int port) {
  LaunchEnv e;
  e.rank = rank;
  e.world_size = world;
  e.local_rank = rank;
  e.master_port = port;
  e.launcher = "torchrun";
  return e;
}

// Each rank's fault message (empty: none), after `body(rank, rendezvous)` ran on every rank.
struct Faults {
  std::mutex m;
  std::vector<std::string> text;
};

void run(int world,
         const std::function<TcpRendezvous::Watch(int rank, std::shared_ptr<Faults>)>& watch_of,
         const std::function<void(int, TcpRendezvous&)>& body, std::shared_ptr<Faults> faults) {
  faults->text.assign(static_cast<std::size_t>(world), "");
  const int port = free_port();
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      TcpRendezvous rv(env_of(r, world, port), 20.0);
      rv.start_monitor(watch_of(r, faults));
      body(r, rv);
    });
  for (auto& t : threads) t.join();
}

TcpRendezvous::Watch quick_watch(int rank, std::shared_ptr<Faults> faults,
                                 std::function<std::int64_t()> issued = {},
                                 std::function<double()> stalled = {}) {
  TcpRendezvous::Watch w;
  w.issued = std::move(issued);
  w.stalled_s = std::move(stalled);
  w.timeout_s = 1.0;
  w.heartbeat_s = 0.05;
  w.on_fault = [rank, faults](const std::string& why) {
    std::lock_guard<std::mutex> lock(faults->m);
    faults->text[static_cast<std::size_t>(rank)] = why;
  };
  return w;
}

// Waits (up to 20 s) until every rank in `ranks` has a fault message.
bool wait_for_faults(Faults& f, const std::vector<int>& ranks) {
  for (int i = 0; i < 2000; ++i) {
    {
      std::lock_guard<std::mutex> lock(f.m);
      bool all = true;
      for (int r : ranks) all = all && !f.text[static_cast<std::size_t>(r)].empty();
      if (all) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace

TEST_CASE("rendezvous: rank 0's bytes reach every rank; a clean finish is no fault",
          "[dist][rendezvous]") {
  auto faults = std::make_shared<Faults>();
  const int port = free_port();
  std::vector<std::string> got(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r)
    threads.emplace_back([&, r] {
      TcpRendezvous rv(env_of(r, 3, port), 20.0);
      got[static_cast<std::size_t>(r)] =
          rv.broadcast(r == 0 ? std::string("id\0of 128 bytes", 15) : "", 20.0);
      rv.start_monitor(quick_watch(r, faults));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      rv.close();
    });
  for (auto& t : threads) t.join();
  faults->text.resize(3);
  for (int r = 0; r < 3; ++r) {
    CHECK(got[static_cast<std::size_t>(r)] == std::string("id\0of 128 bytes", 15));
    CHECK(faults->text[static_cast<std::size_t>(r)].empty());
  }
}

TEST_CASE("rendezvous: a rank that exits is named to every other rank", "[dist][rendezvous]") {
  auto faults = std::make_shared<Faults>();
  run(
      3, [](int r, auto f) { return quick_watch(r, f); },
      [&](int r, TcpRendezvous& rv) {
        if (r == 1) return rv.close(false);  // the process died: its connection closes, no goodbye
        CHECK(wait_for_faults(*faults, {r}));
        rv.close(false);
      },
      faults);
  CHECK_THAT(faults->text[0], HasSubstring("rank 1 exited"));
  CHECK_THAT(faults->text[2], HasSubstring("rank 1 exited"));
}

TEST_CASE("rendezvous: a rank's reported failure reaches every rank with its reason",
          "[dist][rendezvous]") {
  auto faults = std::make_shared<Faults>();
  run(
      3, [](int r, auto f) { return quick_watch(r, f); },
      [&](int r, TcpRendezvous& rv) {
        if (r == 2) {
          rv.report_failure("cannot read shard data/train_007.bin");
          return rv.close(false);
        }
        CHECK(wait_for_faults(*faults, {r}));
        rv.close(false);
      },
      faults);
  CHECK_THAT(faults->text[0], HasSubstring("rank 2 failed: cannot read shard data/train_007.bin"));
  CHECK_THAT(faults->text[1], HasSubstring("rank 2 failed: cannot read shard"));
}

TEST_CASE("rendezvous: a rank behind while the others wait past the timeout is named as hung",
          "[dist][rendezvous]") {
  auto faults = std::make_shared<Faults>();
  auto t0 = std::chrono::steady_clock::now();
  run(
      3,
      [t0](int r, auto f) {
        // Ranks 0 and 2 issued 5 collectives, the last one waiting since t0; rank 1 issued 4.
        return quick_watch(
            r, f, [r] { return std::int64_t{r == 1 ? 4 : 5}; },
            [r, t0] {
              return r == 1 ? 0.0
                            : std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                                  .count();
            });
      },
      [&](int r, TcpRendezvous& rv) {
        CHECK(wait_for_faults(*faults, {r}));
        rv.close(false);
      },
      faults);
  for (int r = 0; r < 3; ++r)
    CHECK_THAT(faults->text[static_cast<std::size_t>(r)], HasSubstring("rank 1 is hung"));
}

TEST_CASE("rendezvous: rank 0 exiting is named to the others", "[dist][rendezvous]") {
  auto faults = std::make_shared<Faults>();
  run(
      2, [](int r, auto f) { return quick_watch(r, f); },
      [&](int r, TcpRendezvous& rv) {
        if (r == 0) return rv.close(false);
        CHECK(wait_for_faults(*faults, {1}));
        rv.close(false);
      },
      faults);
  CHECK_THAT(faults->text[1], HasSubstring("rank 0 exited"));
}

TEST_CASE("rendezvous: a rank that never connects is named after the timeout",
          "[dist][rendezvous]") {
  const int port = free_port();
  CHECK_THROWS_WITH(TcpRendezvous(env_of(0, 3, port), 0.3),
                    HasSubstring("ranks 1, 2 did not connect to rank 0"));
}

TEST_CASE("LaunchEnv reads torchrun's and Open MPI's variables", "[dist][rendezvous]") {
  for (const char* v :
       {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE"})
    ::unsetenv(v);
  CHECK_FALSE(LaunchEnv::from_environment().distributed());
  ::setenv("OMPI_COMM_WORLD_RANK", "1", 1);
  ::setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  auto e = LaunchEnv::from_environment();
  CHECK(e.launcher == "mpirun");
  CHECK(e.rank == 1);
  CHECK(e.world_size == 4);
  CHECK(e.master_addr == "127.0.0.1");
  CHECK(e.master_port == 29500);
  ::setenv("RANK", "3", 1);
  ::setenv("WORLD_SIZE", "8", 1);
  ::setenv("LOCAL_RANK", "3", 1);
  ::setenv("MASTER_ADDR", "node7", 1);
  ::setenv("MASTER_PORT", "6000", 1);
  e = LaunchEnv::from_environment();
  CHECK(e.launcher == "torchrun");
  CHECK(e.rank == 3);
  CHECK(e.world_size == 8);
  CHECK(e.master_addr == "node7");
  CHECK(e.master_port == 6000);
  ::setenv("RANK", "8", 1);
  CHECK_THROWS_WITH(LaunchEnv::from_environment(), HasSubstring("rank 8 is outside [0, 8)"));
  ::setenv("RANK", "x", 1);
  CHECK_THROWS_WITH(LaunchEnv::from_environment(),
                    HasSubstring("RANK: expected a whole number, got 'x'"));
  for (const char* v :
       {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"})
    ::unsetenv(v);
}
