// A two-rank job in which rank 1 fails in the way named on the command line,
// while rank 0 waits in an all-reduce:
//   block  rank 1 sleeps: rank 0's watchdog must end the job (deadline 2 s)
//   exit   rank 1 exits with code 5 without MPI_Finalize: mpirun must end the job
//   throw  rank 1 throws: the error handler must end the job with the message
// Used by fault_test.sh; never returns 0 in a correct build.
#include "distributed/communicator.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "block";
  auto comm = zsq::distributed::Communicator::create(zsq::distributed::CommunicatorOptions{2.0});
  torch::Tensor t = torch::ones({1024});
  comm->all_reduce(t);  // a healthy collective first
  try {
    if (comm->rank() == 1) {
      if (!std::strcmp(mode, "block")) std::this_thread::sleep_for(std::chrono::seconds(120));
      if (!std::strcmp(mode, "exit")) std::_Exit(5);
      if (!std::strcmp(mode, "throw")) throw std::runtime_error("injected failure");
    }
    comm->all_reduce(t);
  } catch (const std::exception& e) {
    zsq::distributed::abort_job(4, e.what());
  }
  std::printf("rank %d finished: the fault did not end the job\n", comm->rank());
  return 0;
}
