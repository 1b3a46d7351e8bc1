#include "distributed/reducer.h"

#include <torch/torch.h>

namespace zsq::distributed {

Reducer::Reducer(std::shared_ptr<Communicator> comm, std::vector<torch::Tensor> params, ReducerOptions options)
    : comm_(std::move(comm)), params_(std::move(params)) {
  TORCH_CHECK(comm_, "Reducer needs a communicator");
  TORCH_CHECK(options.bucket_bytes > 0, "bucket size must be > 0 bytes, got ", options.bucket_bytes);
  int64_t bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const torch::Tensor& p = params_[k];
    TORCH_CHECK(p.is_floating_point(), "Reducer: parameter ", k, " is not floating point");
    const bool fits = !buckets_.empty() && bytes + static_cast<int64_t>(p.nbytes()) <= options.bucket_bytes &&
                      params_[buckets_.back().front()].scalar_type() == p.scalar_type();
    if (!fits) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().push_back(k);
    bytes += static_cast<int64_t>(p.nbytes());
  }
  for (const auto& bucket : buckets_) {
    int64_t numel = 0;
    for (size_t k : bucket) numel += params_[k].numel();
    buffers_.push_back(torch::empty({numel}, params_[bucket.front()].options().requires_grad(false)));
  }
}

void Reducer::reduce() {
  torch::NoGradGuard no_grad;
  // Which parameters got a gradient on some rank.
  torch::Tensor present = torch::zeros({static_cast<int64_t>(params_.size())}, torch::kInt32);
  for (size_t k = 0; k < params_.size(); ++k) present[k] = params_[k].grad().defined() ? 1 : 0;
  comm_->all_reduce(present, ReduceOp::kMax);
  const int32_t* any = present.data_ptr<int32_t>();
  for (size_t b = 0; b < buckets_.size(); ++b) {
    bool needed = false;
    for (size_t k : buckets_[b]) needed = needed || any[k];
    if (!needed) continue;  // the same decision on every rank
    torch::Tensor& flat = buffers_[b];
    int64_t offset = 0;
    for (size_t k : buckets_[b]) {
      const int64_t n = params_[k].numel();
      torch::Tensor slot = flat.narrow(0, offset, n);
      const torch::Tensor& grad = params_[k].grad();
      if (grad.defined()) {
        slot.copy_(grad.reshape({n}));
      } else {
        slot.zero_();
      }
      offset += n;
    }
    comm_->all_reduce(flat, ReduceOp::kAverage);
    offset = 0;
    for (size_t k : buckets_[b]) {
      torch::Tensor& p = params_[k];
      const int64_t n = p.numel();
      if (any[k]) {
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
        p.mutable_grad().copy_(flat.narrow(0, offset, n).view_as(p));
      }
      offset += n;
    }
  }
}

} // namespace zsq::distributed
