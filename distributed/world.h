// The process's place in an MPI job. This slice only tells rank and world size
// (for sharding and logging); the Communicator, Reducer and watchdog come with
// the distributed issue. Works without mpirun (world of one).
#pragma once

#include <string>

namespace zsq::distributed {

struct World {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
};

/// Initializes MPI once when the process was started by mpirun (or always
/// when `force_mpi`), and returns this process's place. Idempotent.
World init_world(bool force_mpi = false);

/// Finalizes MPI if init_world() initialized it.
void finalize_world();

/// Prints "[rank r/w] error: <message>; ending the job" to stderr and ends
/// every rank of the job (MPI_Abort with `code`); a plain exit without MPI.
[[noreturn]] void abort_job(int code, const std::string& message);

} // namespace zsq::distributed
