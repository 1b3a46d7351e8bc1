// Fused CPU loops for LSQ and vertical-layered fake quantization.
//
// The loops are written so that GCC vectorizes them (branch-free selects,
// `omp simd` reductions with -fopenmp-simd), and each is compiled twice, for
// AVX2 and for baseline x86-64, with the machine's best picked at load time
// (`target_clones`). Rounding to nearest even uses the float magic number
// 1.5·2^23: (v + M) - M rounds v to an integer in the current (default,
// to-nearest-even) mode, exactly for |v| < 2^22; v is always clamped to a
// 16-bit range first.
#include "framework/quant/fake_quant_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ZSQ_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ZSQ_SIMD_CLONES
#endif

namespace zsq::quant::detail {
namespace {

constexpr int64_t kTaskElements = 16384;  // one task: at most this many elements of one group
constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23

inline float clampf(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

// --- LSQ -------------------------------------------------------------------

ZSQ_SIMD_CLONES void lsq_forward_span(const float* x, float* y, int64_t n, float s, float lo, float hi) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = clampf(x[i] / s, lo, hi);
    y[i] = ((v + kRoundMagic) - kRoundMagic) * s;
  }
}

// dL/dx = g inside [lo, hi] (inclusive, as torch.clamp's backward), 0 outside.
// dL/ds (before the gradient scale) = Σ g · (round(v) - v) inside, g · lo below,
// g · hi above, with v = x/s. Outside the range the clamped v is the bound.
ZSQ_SIMD_CLONES float lsq_backward_span(const float* x, const float* gy, float* gx, int64_t n, float s, float lo,
                                        float hi) {
  float acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] / s;
    const float g = gy[i];
    const float vc = clampf(v, lo, hi);
    const bool inside = v >= lo && v <= hi;
    gx[i] = inside ? g : 0.0f;
    const float d = inside ? ((vc + kRoundMagic) - kRoundMagic) - v : vc;
    acc += g * d;
  }
  return acc;
}

// --- vertical-layered, shift nesting ---------------------------------------
// q_top = round(clamp(w/s)), q = q_top >> Δ (arithmetic: floor), level = 2^Δ·q + c.

ZSQ_SIMD_CLONES void vl_shift_forward_span(const float* x, float* y, int64_t n, float s, float lo, float hi,
                                           int shift, float centre) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = clampf(x[i] / s, lo, hi);
    const int32_t q = static_cast<int32_t>((v + kRoundMagic) - kRoundMagic) >> shift;
    y[i] = (static_cast<float>(q * (1 << shift)) + centre) * s;
  }
}

// STE through the cascade: dL/dw = g inside the top range; dL/ds = Σ g · (level - v)
// inside and g · level outside.
ZSQ_SIMD_CLONES float vl_shift_backward_span(const float* x, const float* gy, float* gx, int64_t n, float s,
                                             float lo, float hi, int shift, float centre) {
  float acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] / s;
    const float g = gy[i];
    const float vc = clampf(v, lo, hi);
    const bool inside = v >= lo && v <= hi;
    const int32_t q = static_cast<int32_t>((vc + kRoundMagic) - kRoundMagic) >> shift;
    const float level = static_cast<float>(q * (1 << shift)) + centre;
    gx[i] = inside ? g : 0.0f;
    acc += g * (inside ? level - v : level);
  }
  return acc;
}

// --- vertical-layered, round nesting ----------------------------------------
// Each step down: q_{j-1} = min((q_j + 1) >> 1, 2^(j-2) - 1) (round half up,
// saturating at the top code; the bottom never needs it); level = 2^Δ·q.

inline int32_t round_cascade(int32_t q, int top_bits, int shift) {
  for (int j = top_bits; j > top_bits - shift; --j) {
    q = std::min((q + 1) >> 1, (1 << (j - 2)) - 1);
  }
  return q;
}

ZSQ_SIMD_CLONES void vl_round_forward_span(const float* x, float* y, int64_t n, float s, float lo, float hi,
                                           int top_bits, int shift) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = clampf(x[i] / s, lo, hi);
    const int32_t q = round_cascade(static_cast<int32_t>((v + kRoundMagic) - kRoundMagic), top_bits, shift);
    y[i] = static_cast<float>(q * (1 << shift)) * s;
  }
}

ZSQ_SIMD_CLONES float vl_round_backward_span(const float* x, const float* gy, float* gx, int64_t n, float s,
                                             float lo, float hi, int top_bits, int shift) {
  float acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] / s;
    const float g = gy[i];
    const float vc = clampf(v, lo, hi);
    const bool inside = v >= lo && v <= hi;
    const int32_t q = round_cascade(static_cast<int32_t>((vc + kRoundMagic) - kRoundMagic), top_bits, shift);
    const float level = static_cast<float>(q * (1 << shift));
    gx[i] = inside ? g : 0.0f;
    acc += g * (inside ? level - v : level);
  }
  return acc;
}

// --- task plan -----------------------------------------------------------------

struct Plan {
  int64_t groups = 1, group_size = 0, tasks_per_group = 1;
  int64_t tasks() const { return groups * tasks_per_group; }
  // Elements [begin, end) of task t.
  std::pair<int64_t, int64_t> range(int64_t t) const {
    const int64_t g = t / tasks_per_group, c = t % tasks_per_group;
    const int64_t begin = c * kTaskElements;
    const int64_t end = std::min(group_size, begin + kTaskElements);
    return {g * group_size + begin, g * group_size + end};
  }
};

Plan make_plan(const torch::Tensor& x, const torch::Tensor& step) {
  Plan p;
  p.groups = step.numel();
  TORCH_INTERNAL_ASSERT(p.groups >= 1 && x.numel() % p.groups == 0);
  p.group_size = x.numel() / p.groups;
  p.tasks_per_group = std::max<int64_t>(1, (p.group_size + kTaskElements - 1) / kTaskElements);
  return p;
}

int64_t grain_for(const Plan& plan) {
  // Small tensors stay on one thread: a task fork costs microseconds.
  const int64_t per_task = std::min(plan.group_size, kTaskElements);
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, per_task));
}

} // namespace

torch::Tensor forward_cpu(const torch::Tensor& x, const torch::Tensor& step, const KernelParams& p) {
  TORCH_INTERNAL_ASSERT(x.is_contiguous() && step.is_contiguous());
  torch::Tensor y = torch::empty_like(x);
  const Plan plan = make_plan(x, step);
  const float* xs = x.data_ptr<float>();
  const float* ss = step.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  at::parallel_for(0, plan.tasks(), grain_for(plan), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const auto [b, e] = plan.range(t);
      const float s = ss[t / plan.tasks_per_group];
      if (!p.vl) {
        lsq_forward_span(xs + b, ys + b, e - b, s, p.lo, p.hi);
      } else if (!p.round_nesting) {
        vl_shift_forward_span(xs + b, ys + b, e - b, s, p.lo, p.hi, p.shift, p.centre);
      } else {
        vl_round_forward_span(xs + b, ys + b, e - b, s, p.lo, p.hi, p.top_bits, p.shift);
      }
    }
  });
  return y;
}

std::pair<torch::Tensor, torch::Tensor> backward_cpu(const torch::Tensor& x, const torch::Tensor& step,
                                                     const torch::Tensor& grad_y, const KernelParams& p) {
  TORCH_INTERNAL_ASSERT(x.is_contiguous() && step.is_contiguous() && grad_y.is_contiguous());
  torch::Tensor grad_x = torch::empty_like(x);
  const Plan plan = make_plan(x, step);
  std::vector<double> partial(plan.tasks(), 0.0);
  const float* xs = x.data_ptr<float>();
  const float* gys = grad_y.data_ptr<float>();
  const float* ss = step.data_ptr<float>();
  float* gxs = grad_x.data_ptr<float>();
  at::parallel_for(0, plan.tasks(), grain_for(plan), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const auto [b, e] = plan.range(t);
      const float s = ss[t / plan.tasks_per_group];
      if (!p.vl) {
        partial[t] = lsq_backward_span(xs + b, gys + b, gxs + b, e - b, s, p.lo, p.hi);
      } else if (!p.round_nesting) {
        partial[t] = vl_shift_backward_span(xs + b, gys + b, gxs + b, e - b, s, p.lo, p.hi, p.shift, p.centre);
      } else {
        partial[t] = vl_round_backward_span(xs + b, gys + b, gxs + b, e - b, s, p.lo, p.hi, p.top_bits, p.shift);
      }
    }
  });
  // Sum each group's tasks in task order: the result is independent of threading.
  torch::Tensor grad_step = torch::empty({plan.groups}, x.options());
  float* gss = grad_step.data_ptr<float>();
  for (int64_t g = 0; g < plan.groups; ++g) {
    double sum = 0;
    for (int64_t c = 0; c < plan.tasks_per_group; ++c) sum += partial[g * plan.tasks_per_group + c];
    gss[g] = static_cast<float>(sum);
  }
  return {grad_x, grad_step};
}

} // namespace zsq::quant::detail
