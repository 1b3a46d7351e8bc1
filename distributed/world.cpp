#include "distributed/world.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

namespace zsq::distributed {
namespace {
bool g_we_initialized = false;

bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
         std::getenv("PMIX_RANK") != nullptr;
}
} // namespace

World init_world(bool force_mpi) {
  World world;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized && (force_mpi || launched_by_mpirun())) {
    // MULTIPLE: the communicator's watchdog thread may call MPI_Abort while
    // the main thread waits in a collective.
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    g_we_initialized = true;
    initialized = 1;
  }
  if (initialized) {
    MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world.world_size);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world.rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &world.local_rank);
    MPI_Comm_free(&local);
  }
  return world;
}

void abort_job(int code, const std::string& message) {
  int initialized = 0, rank = 0, size = 1;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  std::fprintf(stderr, "[rank %d/%d] error: %s; ending the job\n", rank, size, message.c_str());
  std::fflush(stderr);
  if (initialized) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

void finalize_world() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_we_initialized && !finalized) MPI_Finalize();
}

} // namespace zsq::distributed
