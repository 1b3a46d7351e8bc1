// How the bit-widths of a once-for-all step share it: which of them a step
// trains, and how their gradients on the shared tensors are combined.
#pragma once

#include "distributed/communicator.h"
#include "framework/optim_state.h"  // NamedTensors

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace zsq::trainers {

/// How the bit-widths of a step share it (QuantizeOptions::weighting; see
/// trainers/quantize.h for each rule).
enum class Weighting { kSum, kSandwich, kMinNorm, kNormalized, kPcGrad };

/// "sum", "sandwich", "min-norm", "normalized", "pcgrad" (--weighting's names), and back;
/// parse_weighting throws zsq::OptionError listing the names.
const char* weighting_name(Weighting weighting);
Weighting parse_weighting(const std::string& name);

/// splitmix64's finalizer: the draws of a step (sandwich's middle bit-width, mixes) from (seed, step).
uint64_t splitmix(uint64_t x);

/// The bit-widths (ascending) trained at student step `step`: all of them, or
/// with `sandwich` the lowest, the highest and one middle one drawn from
/// (seed, step) only, so every rank and a resumed run draw the same.
std::vector<int64_t> step_bits(const std::vector<int64_t>& bits, Weighting weighting, uint64_t seed,
                               int64_t step);

/// The gradients of `params` as one float64 vector (zeros where undefined),
/// and back (converted to each parameter's type).
torch::Tensor flat_gradient(const NamedTensors& params);
void set_flat_gradient(const NamedTensors& params, const torch::Tensor& flat);

/// Σ_b g_b · mean_c(||g_c||) / ||g_b|| for the K × P per-bit gradients (rows):
/// the combination of --weighting normalized.
torch::Tensor normalized_sum(const torch::Tensor& gradients);

/// Σ_b g'_b for the K × P per-bit gradients (rows, ascending bit-widths), where
/// g'_b is g_b with its component along each higher bit-width's gradient g_h
/// removed wherever the two conflict (g'_b·g_h < 0; h from the highest down):
/// PCGrad's projection (Yu et al. 2020) with the higher bit-widths first, so
/// no lower bit-width's gradient pulls against a higher one's to first order.
/// The highest bit-width's gradient is taken as it is.
torch::Tensor pcgrad_sum(const torch::Tensor& gradients);

/// α on the simplex minimizing ||Σ α_i g_i||² for the Gram matrix G (K×K,
/// G_ij = g_i·g_j), by Frank-Wolfe as MGDA's MinNormSolver (float64).
std::vector<double> min_norm_weights(const torch::Tensor& gram, int iterations = 250);

/// Combines the per-bit gradients on the shared tensors, `gradients` (K × S,
/// float64, rows in the order of the step's bit-widths), as `weighting` says:
/// min-norm and normalized average them over the ranks first (comm may be null)
/// and write the combination into the shared tensors' gradients; sum and
/// sandwich leave the accumulated gradients as they are. With `step_weighting`,
/// the shared tensors flagged in `is_step` (one flag per tensor of `shared`:
/// the weight steps) are combined by that rule instead, on their own columns.
/// Returns min-norm's α (the main rule's, else the steps'; empty otherwise).
std::vector<double> combine_shared_gradients(Weighting weighting, torch::Tensor& gradients,
                                             const NamedTensors& shared, distributed::Communicator* comm,
                                             const std::vector<bool>& is_step = {},
                                             std::optional<Weighting> step_weighting = std::nullopt);

} // namespace zsq::trainers
