#include "distributed/communicator.h"

#include <mpi.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace zsq::distributed {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

MPI_Comm as_comm(void* p) { return *static_cast<MPI_Comm*>(p); }

MPI_Datatype mpi_type(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kInt64: return MPI_INT64_T;
    case torch::kUInt8: return MPI_UINT8_T;
    case torch::kInt8: return MPI_INT8_T;
    default: TORCH_CHECK(false, "collectives support float32, float64, int32, int64, uint8 and int8 tensors, got ", t);
  }
}

void check_tensor(const torch::Tensor& t, const char* op) {
  TORCH_CHECK(t.defined(), op, ": undefined tensor");
  TORCH_CHECK(t.device().is_cpu(), op, ": the MPI back-end takes CPU tensors, got one on ", t.device(),
              " (CUDA tensors need the NCCL back-end, built with ZSQ_WITH_NCCL)");
  TORCH_CHECK(t.is_contiguous(), op, ": the tensor must be contiguous");
  TORCH_CHECK(t.numel() <= std::numeric_limits<int>::max(), op, ": tensor too large for one MPI call");
}

void check_mpi(int code, const char* op) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  TORCH_CHECK(false, "MPI ", op, " failed: ", std::string(text, length));
}

} // namespace

// Marks a collective as in flight from construction to destruction.
class Communicator::Watch {
 public:
  Watch(Communicator& c, const char* op, int64_t bytes) : c_(c) {
    std::lock_guard<std::mutex> lock(c_.mutex_);
    c_.in_flight_ = true;
    c_.op_ = op;
    c_.op_sequence_ = ++c_.sequence_;
    c_.op_bytes_ = bytes;
    c_.op_start_ = now_seconds();
  }
  ~Watch() {
    std::lock_guard<std::mutex> lock(c_.mutex_);
    c_.in_flight_ = false;
  }

 private:
  Communicator& c_;
};

std::shared_ptr<Communicator> Communicator::create(CommunicatorOptions options) {
  TORCH_CHECK(options.timeout_seconds >= 0, "collective timeout must be >= 0 s, got ", options.timeout_seconds);
  return std::shared_ptr<Communicator>(new Communicator(init_world(), options));
}

Communicator::Communicator(const World& world, CommunicatorOptions options) : world_(world), options_(options) {
  if (world_.world_size > 1) {
    auto* comm = new MPI_Comm;
    MPI_Comm_dup(MPI_COMM_WORLD, comm);
    comm_ = comm;
    if (options_.timeout_seconds > 0) watchdog_ = std::thread([this] { watchdog_loop(); });
  }
}

Communicator::~Communicator() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  if (comm_) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(static_cast<MPI_Comm*>(comm_));
    delete static_cast<MPI_Comm*>(comm_);
  }
}

void Communicator::watchdog_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, std::chrono::milliseconds(100));
    if (stop_ || !in_flight_) continue;
    const double waited = now_seconds() - op_start_;
    if (waited < options_.timeout_seconds) continue;
    std::fprintf(stderr,
                 "[rank %d/%d] error: collective #%lld (%s, %lld bytes) did not finish within %.0f s; another rank "
                 "has probably died or stopped; ending the job\n",
                 world_.rank, world_.world_size, static_cast<long long>(op_sequence_), op_.c_str(),
                 static_cast<long long>(op_bytes_), options_.timeout_seconds);
    std::fflush(stderr);
    int provided = 0;
    MPI_Query_thread(&provided);
    if (provided == MPI_THREAD_MULTIPLE) MPI_Abort(MPI_COMM_WORLD, 3);
    std::_Exit(3);  // mpirun ends the other ranks when one exits without MPI_Finalize
  }
}

void Communicator::all_reduce(torch::Tensor& tensor, ReduceOp op) {
  check_tensor(tensor, "all_reduce");
  TORCH_CHECK(op != ReduceOp::kAverage || tensor.is_floating_point(), "all_reduce: averaging needs a floating "
              "point tensor, got ", tensor.scalar_type());
  const MPI_Datatype type = mpi_type(tensor.scalar_type());
  if (!comm_ || tensor.numel() == 0) return;
  {
    Watch watch(*this, "all_reduce", tensor.nbytes());
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, tensor.data_ptr(), static_cast<int>(tensor.numel()), type,
                            op == ReduceOp::kMax ? MPI_MAX : MPI_SUM, as_comm(comm_)),
              "all_reduce");
  }
  if (op == ReduceOp::kAverage) tensor.div_(world_.world_size);
}

void Communicator::broadcast(torch::Tensor& tensor, int root) {
  check_tensor(tensor, "broadcast");
  TORCH_CHECK(root >= 0 && root < world_.world_size, "broadcast: root ", root, " is not a rank of ",
              world_.world_size);
  const MPI_Datatype type = mpi_type(tensor.scalar_type());
  if (!comm_ || tensor.numel() == 0) return;
  Watch watch(*this, "broadcast", tensor.nbytes());
  check_mpi(MPI_Bcast(tensor.data_ptr(), static_cast<int>(tensor.numel()), type, root, as_comm(comm_)), "broadcast");
}

torch::Tensor Communicator::all_gather(const torch::Tensor& tensor) {
  check_tensor(tensor, "all_gather");
  const MPI_Datatype type = mpi_type(tensor.scalar_type());
  std::vector<int64_t> shape = {world_.world_size};
  for (int64_t d : tensor.sizes()) shape.push_back(d);
  torch::Tensor out = torch::empty(shape, tensor.options());
  if (!comm_) {
    out[0].copy_(tensor);
    return out;
  }
  if (tensor.numel() == 0) return out;
  Watch watch(*this, "all_gather", tensor.nbytes());
  check_mpi(MPI_Allgather(tensor.data_ptr(), static_cast<int>(tensor.numel()), type, out.data_ptr(),
                          static_cast<int>(tensor.numel()), type, as_comm(comm_)),
            "all_gather");
  return out;
}

void Communicator::barrier() {
  if (!comm_) return;
  Watch watch(*this, "barrier", 0);
  check_mpi(MPI_Barrier(as_comm(comm_)), "barrier");
}

} // namespace zsq::distributed
