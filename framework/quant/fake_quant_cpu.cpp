// Fused CPU loops for LSQ and vertical-layered fake quantization.
//
// Each element formula is written once, as a template over `float` and an
// 8-lane GCC vector (`F8`); the span loops run 8 elements at a time and the
// tail one by one with the same formula, so results do not depend on the
// instruction set. Each span is compiled twice, for AVX2 and for baseline
// x86-64, with the machine's best picked at load time (`target_clones`).
// (Plain loops do not vectorize here: GCC treats the selects as control flow.)
// Rounding to nearest even uses the float magic number 1.5·2^23:
// (v + M) - M rounds v to an integer in the default rounding mode, exactly
// for |v| < 2^22; v is always clamped to a 16-bit range first. Step-gradient
// partial sums are kept per lane and added in a fixed order.
#include "framework/quant/fake_quant_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ZSQ_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ZSQ_SIMD_CLONES
#endif

namespace zsq::quant::detail {
namespace {

constexpr int64_t kTaskElements = 16384;  // one task: at most this many elements of one group
constexpr int kLanes = 8;
typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));

// Conversions and loads that read the same for one float and for 8 lanes.
inline int32_t to_int(float v) { return static_cast<int32_t>(v); }
inline I8 to_int(F8 v) { return __builtin_convertvector(v, I8); }
inline float to_float(int32_t q) { return static_cast<float>(q); }
inline F8 to_float(I8 q) { return __builtin_convertvector(q, F8); }
template <typename T> T load(const float* p);
template <> inline float load<float>(const float* p) { return *p; }
template <> inline F8 load<F8>(const float* p) {
  F8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, float v) { *p = v; }
inline void store(float* p, F8 v) { std::memcpy(p, &v, sizeof v); }
template <typename T> T splat(float a) { return T{} + a; }
template <> inline float splat<float>(float a) { return a; }

constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23

// min(max(v, lo), hi), as std::min/std::max compare.
template <typename T> inline T clamp(T v, T lo, T hi) {
  const T m = v < lo ? lo : v;
  return hi < m ? hi : m;
}
template <typename T> inline T round_half_even(T v) { return (v + kRoundMagic) - kRoundMagic; }

// The quantizer of one element: its output level (x̂ = level·s) and, for the
// backward, the clamped v.
struct Params {
  float s, lo, hi, centre;
  int shift, top_bits;
};

template <typename T> inline auto lsq_code(T vc, const Params&) { return round_half_even(vc); }

// vertical-layered, shift nesting: q = q_top >> Δ (arithmetic: floor), level = 2^Δ·q + c.
template <typename T> inline T vl_shift_level(T vc, const Params& p) {
  const auto q = to_int(round_half_even(vc)) >> p.shift;
  return to_float(q * (1 << p.shift)) + p.centre + (vc - vc);  // vc - vc: NaN stays NaN through the integers
}

// vertical-layered, round nesting: each step down q_{j-1} = min((q_j + 1) >> 1,
// 2^(j-2) - 1) (round half up, saturating at the top code; the bottom never
// needs it); level = 2^Δ·q.
template <typename T> inline T vl_round_level(T vc, const Params& p) {
  auto q = to_int(round_half_even(vc));
  for (int j = p.top_bits; j > p.top_bits - p.shift; --j) {
    const auto down = (q + 1) >> 1;
    const int32_t top = (1 << (j - 2)) - 1;
    q = down > top ? top + 0 * down : down;  // "top + 0 * down": a scalar or a vector, as down
  }
  return to_float(q * (1 << p.shift)) + (vc - vc);  // NaN stays NaN through the integers
}

enum class Kind { kLsq, kVlShift, kVlRound };

template <Kind kind, typename T> inline T level_of(T vc, const Params& p) {
  if constexpr (kind == Kind::kLsq) return lsq_code(vc, p);
  if constexpr (kind == Kind::kVlShift) return vl_shift_level(vc, p);
  if constexpr (kind == Kind::kVlRound) return vl_round_level(vc, p);
}

// x̂ = level(clamp(x/s)) · s
template <Kind kind, typename T> inline void forward_at(const float* x, float* y, const Params& p) {
  const T vc = clamp(load<T>(x) / splat<T>(p.s), splat<T>(p.lo), splat<T>(p.hi));
  store(y, level_of<kind>(vc, p) * p.s);
}

// dL/dx = g inside [lo, hi] (inclusive, as torch.clamp's backward), 0 outside.
// dL/ds before the gradient scale: g · (level - v) inside, g · level outside
// (for LSQ: round(v) - v inside, -qn below, qp above), STE through the cascade.
template <Kind kind, typename T> inline T backward_at(const float* x, const float* gy, float* gx, const Params& p) {
  const T v = load<T>(x) / splat<T>(p.s);
  const T g = load<T>(gy);
  const T lo = splat<T>(p.lo), hi = splat<T>(p.hi);
  const T vc = clamp(v, lo, hi);
  const auto inside = (v >= lo) & (v <= hi);
  const T level = level_of<kind>(vc, p);
  store(gx, inside ? g : splat<T>(0.0f));
  return g * (inside ? level - v : level);
}

template <Kind kind> ZSQ_SIMD_CLONES void forward_span(const float* x, float* y, int64_t n, Params p) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) forward_at<kind, F8>(x + i, y + i, p);
  for (; i < n; ++i) forward_at<kind, float>(x + i, y + i, p);
}

template <Kind kind>
ZSQ_SIMD_CLONES double backward_span(const float* x, const float* gy, float* gx, int64_t n, Params p) {
  F8 lanes = splat<F8>(0.0f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) lanes += backward_at<kind, F8>(x + i, gy + i, gx + i, p);
  double sum = 0;
  for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  for (; i < n; ++i) sum += backward_at<kind, float>(x + i, gy + i, gx + i, p);
  return sum;
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

Params params_for(const KernelParams& p, float s) { return {s, p.lo, p.hi, p.centre, p.shift, p.top_bits}; }

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
      const Params q = params_for(p, ss[t / plan.tasks_per_group]);
      if (!p.vl) {
        forward_span<Kind::kLsq>(xs + b, ys + b, e - b, q);
      } else if (!p.round_nesting) {
        forward_span<Kind::kVlShift>(xs + b, ys + b, e - b, q);
      } else {
        forward_span<Kind::kVlRound>(xs + b, ys + b, e - b, q);
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
      const Params q = params_for(p, ss[t / plan.tasks_per_group]);
      if (!p.vl) {
        partial[t] = backward_span<Kind::kLsq>(xs + b, gys + b, gxs + b, e - b, q);
      } else if (!p.round_nesting) {
        partial[t] = backward_span<Kind::kVlShift>(xs + b, gys + b, gxs + b, e - b, q);
      } else {
        partial[t] = backward_span<Kind::kVlRound>(xs + b, gys + b, gxs + b, e - b, q);
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
