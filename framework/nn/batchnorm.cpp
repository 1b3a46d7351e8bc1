#include "framework/nn/batchnorm.h"

#include <torch/torch.h>

namespace zsq::nn {

BatchNorm2dImpl::BatchNorm2dImpl(BatchNorm2dOptions options_) : options(options_) { reset(); }

void BatchNorm2dImpl::reset() {
  TORCH_CHECK(options.num_features() > 0, "BatchNorm2d: num_features must be > 0, got ", options.num_features());
  TORCH_CHECK(options.eps() > 0, "BatchNorm2d: eps must be > 0, got ", options.eps());
  const int64_t c = options.num_features();
  weight = register_parameter("weight", torch::ones({c}));
  bias = register_parameter("bias", torch::zeros({c}));
  running_mean = register_buffer("running_mean", torch::zeros({c}));
  running_var = register_buffer("running_var", torch::ones({c}));
  num_batches_tracked = register_buffer("num_batches_tracked", torch::zeros({}, torch::kInt64));
}

void BatchNorm2dImpl::pretty_print(std::ostream& stream) const {
  stream << "zsq::nn::BatchNorm2d(" << options.num_features() << ", eps=" << options.eps()
         << ", momentum=" << options.momentum() << (tap_ ? ", tap=on" : "") << ")";
}

void BatchNorm2dImpl::set_tap(bool on) {
  tap_ = on;
  if (!on) {
    tap_mean_ = torch::Tensor();
    tap_var_ = torch::Tensor();
    tap_input_ = torch::Tensor();
  }
}

torch::Tensor BatchNorm2dImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.num_features(), "BatchNorm2d(", options.num_features(),
              ") expects N×", options.num_features(), "×H×W input, got ", x.sizes());
  if (tap_) {
    tap_input_ = x;
    tap_mean_ = x.mean({0, 2, 3});
    tap_var_ = x.var({0, 2, 3}, /*unbiased=*/false);
  }
  if (is_training()) {
    torch::NoGradGuard no_grad;
    num_batches_tracked.add_(1);
  }
  return torch::batch_norm(x, weight, bias, running_mean, running_var, is_training(), options.momentum(),
                           options.eps(), /*cudnn_enabled=*/true);
}

} // namespace zsq::nn
