// How the bit-widths share a step: which bit-widths train (sandwich draws),
// and how their gradients on the shared tensors combine (min-norm, normalized).
#include "trainers/weighting.h"

#include "framework/errors.h"

#include <algorithm>
#include <cmath>

namespace zsq::trainers {
uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::vector<int64_t> step_bits(const std::vector<int64_t>& bits, Weighting weighting, uint64_t seed, int64_t step) {
  if (weighting != Weighting::kSandwich || bits.size() <= 3) return bits;
  const size_t middle = 1 + splitmix(seed * 0x100000001b3ULL + static_cast<uint64_t>(step)) % (bits.size() - 2);
  return {bits.front(), bits[middle], bits.back()};
}

torch::Tensor flat_gradient(const NamedTensors& params) {
  std::vector<torch::Tensor> parts;
  for (const auto& [name, p] : params) {
    parts.push_back(p.grad().defined() ? p.grad().reshape(-1).to(torch::kFloat64)
                                       : torch::zeros({p.numel()}, torch::kFloat64));
  }
  return torch::cat(parts);
}

void set_flat_gradient(const NamedTensors& params, const torch::Tensor& flat) {
  int64_t offset = 0;
  for (const auto& [name, p] : params) {
    const torch::Tensor g = flat.narrow(0, offset, p.numel()).view(p.sizes()).to(p.scalar_type());
    if (p.grad().defined()) {
      p.mutable_grad().copy_(g);
    } else {
      p.mutable_grad() = g.clone();
    }
    offset += p.numel();
  }
}

const char* weighting_name(Weighting weighting) {
  switch (weighting) {
    case Weighting::kSum: return "sum";
    case Weighting::kSandwich: return "sandwich";
    case Weighting::kMinNorm: return "min-norm";
    case Weighting::kNormalized: return "normalized";
    case Weighting::kPcGrad: return "pcgrad";
  }
  return "?";
}

Weighting parse_weighting(const std::string& name) {
  for (const Weighting w :
       {Weighting::kSum, Weighting::kSandwich, Weighting::kMinNorm, Weighting::kNormalized, Weighting::kPcGrad}) {
    if (name == weighting_name(w)) return w;
  }
  ZSQ_CHECK_OPTION(false, "unknown --weighting '", name, "' (sum, sandwich, min-norm, normalized, pcgrad)");
  return Weighting::kSum;
}

torch::Tensor normalized_sum(const torch::Tensor& gradients) {
  TORCH_CHECK(gradients.dim() == 2 && gradients.size(0) > 0, "normalized_sum: expected K × P gradients, got ",
              gradients.sizes());
  const torch::Tensor norms = gradients.norm(2, 1, /*keepdim=*/true);
  // A zero gradient stays zero (its scale is irrelevant); the others get the mean norm of all.
  return (gradients * (norms.mean() / norms.clamp_min(1e-30))).sum(0);
}

torch::Tensor pcgrad_sum(const torch::Tensor& gradients) {
  TORCH_CHECK(gradients.dim() == 2 && gradients.size(0) > 0, "pcgrad_sum: expected K × P gradients, got ",
              gradients.sizes());
  const int64_t k = gradients.size(0);
  torch::Tensor total = gradients[k - 1].clone();
  for (int64_t i = 0; i + 1 < k; ++i) {
    torch::Tensor g = gradients[i].clone();
    // Against the original higher gradients, highest first (PCGrad projects onto the other tasks' raw gradients).
    for (int64_t h = k - 1; h > i; --h) {
      const torch::Tensor other = gradients[h];
      const double dot = g.dot(other).item<double>();
      const double norm2 = other.dot(other).item<double>();
      if (dot < 0 && norm2 > 0) g.sub_(other * (dot / norm2));
    }
    total.add_(g);
  }
  return total;
}

std::vector<double> min_norm_weights(const torch::Tensor& gram_in, int iterations) {
  const torch::Tensor gram = gram_in.to(torch::kFloat64).contiguous();
  const int64_t k = gram.size(0);
  TORCH_CHECK(gram.dim() == 2 && gram.size(1) == k && k > 0, "min_norm_weights: the Gram matrix must be K×K");
  const auto m = gram.accessor<double, 2>();
  std::vector<double> alpha(static_cast<size_t>(k), 1.0 / static_cast<double>(k));
  for (int it = 0; it < iterations; ++it) {
    // (Mα)_i and αᵀMα
    std::vector<double> ma(static_cast<size_t>(k), 0.0);
    double a = 0;
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) ma[i] += m[i][j] * alpha[j];
      a += alpha[i] * ma[i];
    }
    const int64_t t = std::min_element(ma.begin(), ma.end()) - ma.begin();
    // Line search between v = Σ α g and g_t: minimize ||(1-γ)v + γ g_t||².
    const double b = ma[t], c = m[t][t];
    const double denominator = a - 2 * b + c;
    if (denominator <= 1e-30) break;
    const double gamma = std::clamp((a - b) / denominator, 0.0, 1.0);
    double change = 0;
    for (int64_t i = 0; i < k; ++i) {
      const double next = (1 - gamma) * alpha[i] + (i == t ? gamma : 0.0);
      change += std::abs(next - alpha[i]);
      alpha[i] = next;
    }
    if (change < 1e-9) break;
  }
  return alpha;
}

namespace {

bool combines(Weighting w) {
  return w == Weighting::kNormalized || w == Weighting::kMinNorm || w == Weighting::kPcGrad;
}

// The K × P per-bit gradients combined as `weighting` says (sum and sandwich: the plain sum); min-norm's α
// goes to `alpha`.
torch::Tensor combine_rows(Weighting weighting, const torch::Tensor& d, std::vector<double>* alpha) {
  switch (weighting) {
    case Weighting::kNormalized:
      // Each rescaled to the mean norm: the lowest bit-width's large loss no longer sets the direction.
      return normalized_sum(d);
    case Weighting::kPcGrad:
      return pcgrad_sum(d);
    case Weighting::kMinNorm: {
      // MGDA (Sener & Koltun): α from the shared parameters' gradients only, task-specific ones (here:
      // per-bit activation steps and BatchNorm) step on their own gradients.
      *alpha = min_norm_weights(d.matmul(d.t()));
      const torch::Tensor a = torch::tensor(*alpha, torch::kFloat64) * static_cast<double>(d.size(0));
      return a.matmul(d);
    }
    case Weighting::kSum:
    case Weighting::kSandwich:
      break;
  }
  return d.sum(0);
}

} // namespace

std::vector<double> combine_shared_gradients(Weighting weighting, torch::Tensor& d, const NamedTensors& shared,
                                             distributed::Communicator* comm, const std::vector<bool>& is_step,
                                             std::optional<Weighting> step_weighting) {
  if (!combines(weighting) && !(step_weighting && combines(*step_weighting))) {
    return {};  // the accumulated gradients are the sum already
  }
  // The global per-bit gradients on the shared tensors are combined (the same on every rank); the per-bit
  // tensors keep their own gradients, averaged by the reducer afterwards (which leaves the already global
  // shared ones as they are).
  if (comm && comm->size() > 1) comm->all_reduce(d, distributed::ReduceOp::kAverage);
  std::vector<double> alpha;
  torch::Tensor combined = combine_rows(weighting, d, &alpha);
  if (step_weighting) {
    // The weight steps' columns on their own, by their own rule.
    TORCH_CHECK(is_step.size() == shared.size(), "combine_shared_gradients: one step flag per shared tensor");
    std::vector<int64_t> columns;
    int64_t offset = 0;
    for (size_t i = 0; i < shared.size(); ++i) {
      const int64_t n = shared[i].second.numel();
      for (int64_t j = 0; is_step[i] && j < n; ++j) columns.push_back(offset + j);
      offset += n;
    }
    if (!columns.empty()) {
      const torch::Tensor index = torch::tensor(columns, torch::kLong);
      std::vector<double> step_alpha;
      combined.index_copy_(0, index, combine_rows(*step_weighting, d.index_select(1, index), &step_alpha));
      if (alpha.empty()) alpha = step_alpha;
    }
  }
  set_flat_gradient(shared, combined);
  return alpha;
}

} // namespace zsq::trainers
