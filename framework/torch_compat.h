// The differences between the LibTorch versions ZSQ builds against: Debian's 1.13 (the CPU build) and
// PyPI's 2.x (the CUDA flavour, launch/setup-cuda). Every version switch lives here.
#pragma once

#include <torch/torch.h>

#include <sstream>
#include <string>
#include <type_traits>

namespace zsq::compat {

/// The key of a parameter in torch::optim::Optimizer::state(): the TensorImpl's address printed as a
/// string in 1.13, the address itself (void*) in 2.x.
template <class StateMap>
typename StateMap::key_type optimizer_state_key(const StateMap&, const torch::Tensor& p) {
  using Key = typename StateMap::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;  // what 1.13's c10::guts::to_string does
    os << p.unsafeGetTensorImpl();
    return os.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

} // namespace zsq::compat
