// Where this process stands in a multi-process launch: rank, world size, local rank and the
// address of rank 0, read from the environment that torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT) or Open MPI's mpirun (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK) sets.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <optional>
#include <string>

#include "fathom/core/error.hpp"

namespace fathom::dist {

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // the GPU this process uses on its host
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // "torchrun" (or fathom-train --nproc), "mpirun", or "none"

  bool distributed() const { return world_size > 1; }

  // torchrun's variables when RANK and WORLD_SIZE are set, else Open MPI's, else MPICH/Slurm PMI's
  // (PMI_RANK, PMI_SIZE), else one process. MASTER_ADDR and MASTER_PORT default to 127.0.0.1 and
  // 29500 (under mpirun on several hosts, export MASTER_ADDR to the ranks: mpirun -x MASTER_ADDR).
  static LaunchEnv from_environment() {
    LaunchEnv e;
    if (std::getenv("RANK") && std::getenv("WORLD_SIZE")) {
      e.launcher = "torchrun";
      e.rank = int_var("RANK");
      e.world_size = int_var("WORLD_SIZE");
      e.local_rank = std::getenv("LOCAL_RANK") ? int_var("LOCAL_RANK") : e.rank;
    } else if (std::getenv("OMPI_COMM_WORLD_RANK") && std::getenv("OMPI_COMM_WORLD_SIZE")) {
      e.launcher = "mpirun";
      e.rank = int_var("OMPI_COMM_WORLD_RANK");
      e.world_size = int_var("OMPI_COMM_WORLD_SIZE");
      e.local_rank = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")
                         ? int_var("OMPI_COMM_WORLD_LOCAL_RANK")
                         : e.rank;
    } else if (std::getenv("PMI_RANK") && std::getenv("PMI_SIZE")) {
      e.launcher = "mpirun";
      e.rank = int_var("PMI_RANK");
      e.world_size = int_var("PMI_SIZE");
      e.local_rank = std::getenv("MPI_LOCALRANKID") ? int_var("MPI_LOCALRANKID") : e.rank;
    } else {
      return e;
    }
    if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
    if (std::getenv("MASTER_PORT")) e.master_port = int_var("MASTER_PORT");
    FATHOM_CHECK(e.world_size >= 1, "WORLD_SIZE: expected at least 1, got " << e.world_size);
    FATHOM_CHECK(e.rank >= 0 && e.rank < e.world_size, "rank " << e.rank << " is outside [0, "
                                                               << e.world_size << ") (from the "
                                                               << e.launcher << " environment)");
    FATHOM_CHECK(e.local_rank >= 0,
                 "LOCAL_RANK: expected a non-negative number, got " << e.local_rank);
    FATHOM_CHECK(e.master_port > 0 && e.master_port < 65536,
                 "MASTER_PORT: expected a port in 1..65535, got " << e.master_port);
    return e;
  }

 private:
  static int int_var(const char* name) {
    const char* v = std::getenv(name);
    FATHOM_CHECK(v && *v, "environment variable " << name << " is empty");
    char* end = nullptr;
    errno = 0;
    const long x = std::strtol(v, &end, 10);
    FATHOM_CHECK(errno == 0 && end && *end == '\0' && x >= -1 && x <= 1 << 24,
                 "environment variable " << name << ": expected a whole number, got '" << v << "'");
    return static_cast<int>(x);
  }
};

}  // namespace fathom::dist
