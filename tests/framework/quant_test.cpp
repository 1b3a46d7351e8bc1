// Fused fake quantizers: hand-computed values, the ATen reference chain,
// finite differences of the straight-through surrogate, nesting and bit-planes.
#include "framework/quant/adaround.h"
#include "framework/quant/bitplanes.h"
#include "framework/quant/layers.h"
#include "framework/quant/fake_quant.h"
#include "framework/quant/reference.h"
#include "tests/support.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <cmath>

namespace zsq::quant {
namespace {

using test::error_of;

class QuantTest : public test::SeedingFixture {};

// x̂, dL/dx and dL/ds of `fn` for dL/dx̂ = grad_y.
struct Grads {
  torch::Tensor y, grad_x, grad_step;
};
template <typename Fn>
Grads run(Fn&& fn, const torch::Tensor& x, const torch::Tensor& step, const torch::Tensor& grad_y) {
  torch::Tensor xv = x.clone().requires_grad_(true);
  torch::Tensor sv = step.clone().requires_grad_(true);
  torch::Tensor y = fn(xv, sv);
  y.backward(grad_y);
  return {y.detach(), xv.grad(), sv.grad()};
}

TEST_F(QuantTest, RangesFollowTwosComplement) {
  EXPECT_EQ(signed_range(4).qn, 8);
  EXPECT_EQ(signed_range(4).qp, 7);
  EXPECT_EQ(signed_range(2).qn, 2);
  EXPECT_EQ(unsigned_range(4).qn, 0);
  EXPECT_EQ(unsigned_range(4).qp, 15);
  EXPECT_NE(error_of([] { signed_range(1); }).find("signed bits must be in [2, 16], got 1"), std::string::npos);
  EXPECT_NE(error_of([] { unsigned_range(17); }).find("got 17"), std::string::npos);
}

TEST_F(QuantTest, LsqForwardAndBackwardByHand) {
  // s = 0.5, signed 3 bits: [-4, 3]. x/s = -2.6 -0.5 0.5 1.5 2.5 5 200 -9
  const torch::Tensor x = torch::tensor({-1.3f, -0.25f, 0.25f, 0.75f, 1.25f, 2.5f, 100.0f, -4.5f});
  const torch::Tensor s = torch::tensor(0.5f);
  const auto g = run([](auto a, auto b) { return lsq_fake_quant(a, b, signed_range(3), 1.0); }, x, s,
                     torch::ones_like(x));
  // Ties go to even: -0.5 -> -0, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
  const torch::Tensor want = torch::tensor({-1.5f, 0.0f, 0.0f, 1.0f, 1.0f, 1.5f, 1.5f, -2.0f});
  EXPECT_TRUE(torch::equal(g.y, want)) << g.y;
  EXPECT_TRUE(torch::equal(g.grad_x, torch::tensor({1.f, 1.f, 1.f, 1.f, 1.f, 0.f, 0.f, 0.f})));
  // Inside round(v) - v: -0.4 +0.5 -0.5 +0.5 -0.5; above +3, +3; below -4.
  EXPECT_NEAR(g.grad_step.item<float>(), -0.4 + 0.5 - 0.5 + 0.5 - 0.5 + 3 + 3 - 4, 1e-6);
  EXPECT_EQ(g.grad_step.dim(), 0);
}

TEST_F(QuantTest, LsqBoundsAreInsideTheRange) {
  // Exactly on the clamp bounds: gradient to x passes, step gradient is round(v) - v = 0.
  const torch::Tensor x = torch::tensor({1.5f, -2.0f});
  const auto g = run([](auto a, auto b) { return lsq_fake_quant(a, b, signed_range(3), 1.0); }, x,
                     torch::tensor(0.5f), torch::ones_like(x));
  EXPECT_TRUE(torch::equal(g.y, x));
  EXPECT_TRUE(torch::equal(g.grad_x, torch::ones_like(x)));
  EXPECT_EQ(g.grad_step.item<float>(), 0.0f);
}

TEST_F(QuantTest, LsqRejectsBadSteps) {
  const torch::Tensor x = torch::randn({4, 3});
  EXPECT_NE(error_of([&] { lsq_fake_quant(x, torch::tensor(0.0f), signed_range(4), 1.0); })
                .find("step sizes must be positive, got 0"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lsq_fake_quant(x, torch::tensor({0.1f, -0.1f, 0.1f, 0.1f}), signed_range(4), 1.0); })
                .find("must be positive, got -0.1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lsq_fake_quant(x, torch::ones({3}), signed_range(4), 1.0); })
                .find("step must hold 1 value (per tensor) or x.size(0) values"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lsq_fake_quant(x.to(torch::kFloat64), torch::tensor(0.1f), signed_range(4), 1.0); })
                .find("input must be float32"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lsq_fake_quant(torch::empty({0}), torch::tensor(0.1f), signed_range(4), 1.0); })
                .find("empty input"),
            std::string::npos);
}

// The reference's dL/dx goes through "* s" and "/ s", so it is gy up to one
// rounding; the mask (which elements pass) must be identical.
void expect_same_grad_x(const torch::Tensor& fused, const torch::Tensor& ref) {
  EXPECT_TRUE(torch::equal(fused == 0, ref == 0));
  EXPECT_TRUE(torch::allclose(fused, ref, 1e-6, 0));
}

struct Case {
  bool per_channel;
  bool is_signed;
  int64_t bits;
};

// Random values plus values exactly on rounding ties (k + 1/2)·s and on the bounds.
torch::Tensor test_input(const std::vector<int64_t>& shape, const torch::Tensor& step, const QuantRange& r) {
  torch::Tensor x = torch::randn(shape) * 2.0;
  std::vector<int64_t> bshape(shape.size(), 1);
  if (step.numel() > 1) bshape[0] = step.numel();
  const torch::Tensor s = step.reshape(bshape);
  const torch::Tensor ties = (torch::randint(-r.qn, r.qp, shape).to(torch::kFloat32) + 0.5f) * s;
  const torch::Tensor bounds = torch::where(torch::rand(shape) < 0.5, -r.qn * s.expand(shape), r.qp * s.expand(shape));
  const torch::Tensor pick = torch::rand(shape);
  x = torch::where(pick < 0.2, ties, x);
  return torch::where(pick > 0.95, bounds, x).contiguous();
}

TEST_F(QuantTest, LsqMatchesTheAtenReference) {
  for (const Case c : {Case{false, false, 2}, Case{false, true, 4}, Case{true, true, 3}, Case{true, true, 8},
                       Case{false, false, 8}, Case{true, false, 4}}) {
    SCOPED_TRACE("per_channel " + std::to_string(c.per_channel) + " signed " + std::to_string(c.is_signed) +
                 " bits " + std::to_string(c.bits));
    const QuantRange r = c.is_signed ? signed_range(c.bits) : unsigned_range(c.bits);
    const std::vector<int64_t> shape = {16, 8, 5, 5};
    const torch::Tensor step = c.per_channel ? torch::rand({16}) * 0.2 + 0.05 : torch::tensor(0.13f);
    torch::Tensor x = test_input(shape, step, r);
    if (!c.is_signed) x = x.abs();
    const torch::Tensor gy = torch::randn(shape);
    const double g = lsq_grad_scale(x.numel(), r);
    const auto fused = run([&](auto a, auto b) { return lsq_fake_quant(a, b, r, g); }, x, step, gy);
    const auto ref = run([&](auto a, auto b) { return lsq_fake_quant_reference(a, b, r, g); }, x, step, gy);
    EXPECT_TRUE(torch::equal(fused.y, ref.y)) << (fused.y - ref.y).abs().max();
    expect_same_grad_x(fused.grad_x, ref.grad_x);
    EXPECT_TRUE(torch::allclose(fused.grad_step, ref.grad_step, 1e-4, 1e-6))
        << fused.grad_step << "\n" << ref.grad_step;
  }
}

// The straight-through surrogate at the point (x0, s0): rounding frozen as an
// offset, F(x, s) = Σ gy · (L0 - clamp(x0/s0) + clamp(x/s)) · s, where L0 is
// the level (in steps) the quantizer outputs at (x0, s0). Its exact derivative
// is what the fused backward must return (before the gradient scale).
double surrogate(const torch::Tensor& x, double s, const torch::Tensor& level0, const torch::Tensor& v0c,
                 const torch::Tensor& gy, double lo, double hi) {
  const torch::Tensor v = torch::clamp(x.to(torch::kFloat64) / s, lo, hi);
  return ((level0 - v0c + v) * s * gy).sum().item<double>();
}

TEST_F(QuantTest, GradientsMatchFiniteDifferencesOfTheSurrogate) {
  for (const int64_t bits : {2, 4, 8}) {
    for (const bool vl : {false, true}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + (vl ? " vertical-layered" : " lsq"));
      const QuantRange top = signed_range(vl ? 8 : bits);
      const double s0 = 0.07;
      const torch::Tensor x0 = torch::randn({64});
      const torch::Tensor gy = torch::randn({64}).to(torch::kFloat64);
      const auto fn = [&](const torch::Tensor& a, const torch::Tensor& b) {
        return vl ? vl_fake_quant(a, b, 8, bits, Nesting::kShift, 1.0) : lsq_fake_quant(a, b, top, 1.0);
      };
      const auto g = run(fn, x0, torch::tensor(static_cast<float>(s0)), gy.to(torch::kFloat32));
      const torch::Tensor level0 = g.y.to(torch::kFloat64) / static_cast<float>(s0);
      const torch::Tensor v0c = torch::clamp(x0.to(torch::kFloat64) / static_cast<float>(s0), -top.qn, top.qp);
      const double h = 1e-6;
      const double ds = (surrogate(x0, s0 + h, level0, v0c, gy, -top.qn, top.qp) -
                         surrogate(x0, s0 - h, level0, v0c, gy, -top.qn, top.qp)) /
                        (2 * h);
      EXPECT_NEAR(g.grad_step.item<float>(), ds, 1e-3 * (1 + std::abs(ds)));
      for (const int64_t i : {0, 7, 31}) {
        torch::Tensor xp = x0.to(torch::kFloat64).clone(), xm = xp.clone();
        xp[i] += h;
        xm[i] -= h;
        const double dx = (surrogate(xp, s0, level0, v0c, gy, -top.qn, top.qp) -
                           surrogate(xm, s0, level0, v0c, gy, -top.qn, top.qp)) /
                          (2 * h);
        EXPECT_NEAR(g.grad_x[i].item<float>(), dx, 1e-4 * (1 + std::abs(dx))) << "element " << i;
      }
    }
  }
}

TEST_F(QuantTest, GradScaleMultipliesOnlyTheStepGradient) {
  const torch::Tensor x = torch::randn({8, 10});
  const torch::Tensor s = torch::full({8}, 0.1f);
  const torch::Tensor gy = torch::randn({8, 10});
  const auto a = run([](auto p, auto q) { return lsq_fake_quant(p, q, signed_range(4), 1.0); }, x, s, gy);
  const auto b = run([](auto p, auto q) { return lsq_fake_quant(p, q, signed_range(4), 0.25); }, x, s, gy);
  EXPECT_TRUE(torch::equal(a.y, b.y));
  EXPECT_TRUE(torch::equal(a.grad_x, b.grad_x));
  EXPECT_TRUE(torch::allclose(a.grad_step * 0.25, b.grad_step));
  EXPECT_DOUBLE_EQ(lsq_grad_scale(80, signed_range(4)), 1.0 / std::sqrt(80.0 * 7));
}

TEST_F(QuantTest, ResultsDoNotDependOnTheThreadCount) {
  const torch::Tensor x = torch::randn({3, 200000});
  const torch::Tensor s = torch::tensor({0.1f, 0.2f, 0.3f});
  const torch::Tensor gy = torch::randn({3, 200000});
  const auto fn = [](auto p, auto q) { return vl_fake_quant(p, q, 8, 4, Nesting::kShift, 1e-3); };
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = run(fn, x, s, gy);
  at::set_num_threads(std::max(2, threads));
  const auto many = run(fn, x, s, gy);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one.y, many.y));
  EXPECT_TRUE(torch::equal(one.grad_x, many.grad_x));
  EXPECT_TRUE(torch::equal(one.grad_step, many.grad_step));
}

TEST_F(QuantTest, LsqInitialStep) {
  const torch::Tensor w = torch::tensor({{1.0f, -3.0f}, {0.0f, 0.0f}});
  const torch::Tensor per_channel = lsq_init_step(w, signed_range(4), true);
  EXPECT_NEAR(per_channel[0].item<float>(), 2 * 2.0 / std::sqrt(7.0), 1e-6);
  EXPECT_GT(per_channel[1].item<float>(), 0.0f);  // all-zero channel: kept positive
  EXPECT_NEAR(lsq_init_step(w, unsigned_range(2), false).item<float>(), 2 * 1.0 / std::sqrt(3.0), 1e-6);
}

TEST_F(QuantTest, VerticalLayeredMatchesTheAtenReference) {
  for (const Nesting nesting : {Nesting::kShift, Nesting::kRound}) {
    for (int64_t bits = 2; bits <= 8; ++bits) {
      SCOPED_TRACE(nesting_name(nesting) + " bits " + std::to_string(bits));
      const torch::Tensor step = torch::rand({12}) * 0.01 + 0.005;
      const torch::Tensor w = test_input({12, 6, 3, 3}, step, signed_range(8));
      const torch::Tensor gy = torch::randn({12, 6, 3, 3});
      const double g = lsq_grad_scale(w.numel(), signed_range(bits));
      const auto fused = run([&](auto a, auto b) { return vl_fake_quant(a, b, 8, bits, nesting, g); }, w, step, gy);
      const auto ref =
          run([&](auto a, auto b) { return vl_fake_quant_reference(a, b, 8, bits, nesting, g); }, w, step, gy);
      EXPECT_TRUE(torch::equal(fused.y, ref.y)) << (fused.y - ref.y).abs().max();
      expect_same_grad_x(fused.grad_x, ref.grad_x);
      EXPECT_TRUE(torch::allclose(fused.grad_step, ref.grad_step, 1e-4, 1e-6));
      // The codes give the same values.
      const torch::Tensor codes = vl_codes(w, step, 8, bits, nesting);
      const torch::Tensor levels = codes.to(torch::kFloat32) * float(1 << (8 - bits)) +
                                   float(nesting == Nesting::kShift ? ((1 << (8 - bits)) - 1) / 2.0 : 0.0);
      EXPECT_TRUE(torch::equal(levels * step.reshape({12, 1, 1, 1}), fused.y));
      EXPECT_GE(codes.min().item<int64_t>(), -signed_range(bits).qn);
      EXPECT_LE(codes.max().item<int64_t>(), signed_range(bits).qp);
    }
  }
}

TEST_F(QuantTest, NotANumberStaysNotANumber) {
  // A NaN latent weight or activation must surface in the output (torch.round and
  // torch.clamp propagate it), or a diverged run would train on silently.
  // 17 elements: a full 8-lane span, a second one, and the scalar tail.
  for (const int64_t at : {0, 9, 16}) {
    torch::Tensor w = torch::randn({1, 17}) * 0.05;
    w[0][at] = std::nan("");
    const torch::Tensor step = torch::tensor({0.01f});
    for (const Nesting nesting : {Nesting::kShift, Nesting::kRound}) {
      for (const int64_t bits : {2, 4, 8}) {
        const torch::Tensor y = vl_fake_quant(w, step, 8, bits, nesting, 1.0);
        EXPECT_TRUE(std::isnan(y[0][at].item<float>())) << "bits " << bits << " at " << at;
        EXPECT_EQ(torch::isnan(y).sum().item<int64_t>(), 1);
      }
    }
    const torch::Tensor y = lsq_fake_quant(w.view(-1), torch::tensor(0.01f), signed_range(4), 1.0);
    EXPECT_TRUE(std::isnan(y[at].item<float>()));
  }
}

TEST_F(QuantTest, TopBitsOfVerticalLayeredIsLsq) {
  const torch::Tensor step = torch::rand({5}) * 0.01 + 0.005;
  const torch::Tensor w = test_input({5, 40}, step, signed_range(8));
  const torch::Tensor gy = torch::randn({5, 40});
  const auto vl = run([](auto a, auto b) { return vl_fake_quant(a, b, 8, 8, Nesting::kShift, 0.5); }, w, step, gy);
  const auto lsq = run([](auto a, auto b) { return lsq_fake_quant(a, b, signed_range(8), 0.5); }, w, step, gy);
  EXPECT_TRUE(torch::equal(vl.y, lsq.y));
  EXPECT_TRUE(torch::equal(vl.grad_x, lsq.grad_x));
  EXPECT_TRUE(torch::allclose(vl.grad_step, lsq.grad_step));
}

TEST_F(QuantTest, ShiftNestingIsBitPlanes) {
  const torch::Tensor step = torch::full({4}, 0.01f);
  const torch::Tensor w = torch::randn({4, 257}) * 0.5;
  const torch::Tensor top = vl_codes(w, step, 8, 8, Nesting::kShift);
  const VerticalLayers layers = make_vertical_layers(top, 8, 2);
  ASSERT_EQ(layers.planes.size(), 6u);
  EXPECT_EQ(layers.planes[0].numel(), (4 * 257 + 7) / 8);  // one bit per weight
  for (int64_t k = 2; k <= 8; ++k) {
    SCOPED_TRACE("bits " + std::to_string(k));
    const torch::Tensor cascade = vl_codes(w, step, 8, k, Nesting::kShift);
    EXPECT_TRUE(torch::equal(rebuild_codes(layers, k), cascade));
    if (k < 8) {
      const torch::Tensor e = vl_codes(w, step, 8, k + 1, Nesting::kShift).to(torch::kInt32) - 2 * cascade.to(torch::kInt32);
      EXPECT_GE(e.min().item<int64_t>(), 0);
      EXPECT_LE(e.max().item<int64_t>(), 1);
      EXPECT_GT(e.sum().item<int64_t>(), 0);  // the planes are not all zero
    }
  }
  // For every int8 code, every pair of bit-widths: cascade equals direct shift.
  const torch::Tensor all = torch::arange(-128, 128, torch::kInt16);
  const VerticalLayers every = make_vertical_layers(all, 8, 2);
  for (int64_t k = 2; k <= 8; ++k) {
    EXPECT_TRUE(torch::equal(rebuild_codes(every, k), torch::bitwise_right_shift(all.to(torch::kInt32), 8 - k).to(torch::kInt16)));
  }
}

TEST_F(QuantTest, RoundNestingSaturatesAtTheTopCode) {
  // Int8 code 127 rounds up to 64 at 7 bits, which saturates to 63.
  const torch::Tensor s = torch::tensor({1.0f});
  const torch::Tensor w = torch::tensor({{127.0f, -128.0f, 5.0f, 6.0f}});
  EXPECT_TRUE(torch::equal(vl_codes(w, s, 8, 7, Nesting::kRound), torch::tensor({{63, -64, 3, 3}}, torch::kInt16)));
  EXPECT_TRUE(torch::equal(vl_codes(w, s, 8, 7, Nesting::kShift), torch::tensor({{63, -64, 2, 3}}, torch::kInt16)));
  EXPECT_DOUBLE_EQ(vl_level(1, 8, 4, Nesting::kShift), 16 + 7.5);  // bin centre of codes 16..31
  EXPECT_DOUBLE_EQ(vl_level(-1, 8, 4, Nesting::kRound), -16);
  EXPECT_EQ(parse_nesting("round"), Nesting::kRound);
  EXPECT_NE(error_of([] { parse_nesting("floor"); }).find("unknown nesting 'floor'"), std::string::npos);
  EXPECT_NE(error_of([&] { vl_fake_quant(w, s, 8, 9, Nesting::kShift, 1.0); }).find("bits must be in [2, top bits = 8]"),
            std::string::npos);
}

TEST_F(QuantTest, BitPackingRoundTrips) {
  const torch::Tensor bits = torch::randint(0, 2, {77}, torch::kUInt8);
  const torch::Tensor packed = pack_bits(bits);
  EXPECT_EQ(packed.numel(), 10);
  EXPECT_TRUE(torch::equal(unpack_bits(packed, 77), bits));
  EXPECT_EQ(pack_bits(torch::tensor({1, 0, 0, 0, 0, 0, 0, 1}, torch::kUInt8)).item<int64_t>(), 129);
  EXPECT_NE(error_of([] { pack_bits(torch::tensor({2}, torch::kUInt8)); }).find("0 or 1"), std::string::npos);
  EXPECT_NE(error_of([&] { unpack_bits(packed, 90); }).find("cannot hold exactly 90 bits"), std::string::npos);
}

} // namespace
} // namespace zsq::quant

namespace zsq::quant {
namespace {

using AdaRoundTest = test::SeedingFixture;

TEST_F(AdaRoundTest, StartsAtTheWeightAndRoundsToFloorOrCeiling) {
  const torch::Tensor w = torch::randn({4, 3, 3, 3}) * 0.1;
  const torch::Tensor step = torch::full({4}, 0.02);
  const AdaRound r(w, step, signed_range(8));  // ±128 steps of 0.02: every weight inside the range
  EXPECT_TRUE(torch::allclose(r.soft_weight(step), w, 1e-5, 1e-6));
  const torch::Tensor floor = torch::floor(w / 0.02);
  const torch::Tensor codes = r.hard_codes();
  EXPECT_TRUE(((codes == floor) | (codes == floor + 1)).all().item<bool>());
  // At the start V >= 0 exactly where frac(w/s) >= 0.5 (h(0) = 0.5): hard rounding is nearest rounding.
  EXPECT_EQ(codes.ne(torch::round(w / 0.02)).sum().item<int64_t>(), 0);
  // Narrow range: codes are clamped.
  const AdaRound narrow(w, step, signed_range(2));
  EXPECT_LE(narrow.hard_codes().max().item<double>(), 1);
  EXPECT_GE(narrow.hard_codes().min().item<double>(), -2);
  EXPECT_THROW_WITH(AdaRound(w, torch::full({3}, 0.02), signed_range(4)), "one step per output channel");
  EXPECT_THROW_WITH(AdaRound(w, torch::zeros({4}), signed_range(4)), "steps must be positive");
}

TEST_F(AdaRoundTest, RegulariserAndScheduleFollowBrecq) {
  const torch::Tensor w = torch::tensor({0.25, 0.5, 0.75, 1.0}).reshape({4, 1});
  const AdaRound r(w, torch::ones({4}), signed_range(4));
  // h = frac: 0.25, 0.5, 0.75, 0 (w = 1 is a grid point): 1 - |2h - 1|^β.
  const double beta = 2;
  const double expected = (1 - 0.25) + 1 + (1 - 0.25) + 0;
  EXPECT_NEAR(r.regularizer(beta).item<double>(), expected, 1e-4);
  RoundingSchedule s;
  EXPECT_FALSE(s.regularizing(199, 1000));
  EXPECT_TRUE(s.regularizing(200, 1000));
  EXPECT_DOUBLE_EQ(s.beta(200, 1000), 20);
  EXPECT_DOUBLE_EQ(s.beta(600, 1000), 11);
  EXPECT_DOUBLE_EQ(s.beta(1000, 1000), 2);
  EXPECT_NEAR(rectified_sigmoid(torch::tensor({-100.0, 0.0, 100.0})).sub(torch::tensor({0.0, 0.5, 1.0})).abs().max().item<double>(), 0, 1e-6);
}

TEST_F(AdaRoundTest, LayerTakesAnOverrideWeightAndDropsInputElements) {
  QConv2dOptions o(2, 3, 3);
  o.quant(QuantLayerOptions().bits({4}).wbits({4}).abits({4}).top_bits(4));
  QConv2d conv(o);
  conv->set_calibrating(true);
  const torch::Tensor x = torch::rand({8, 2, 6, 6});
  torch::NoGradGuard no_grad;
  conv->forward(x);
  conv->set_calibrating(false);
  const torch::Tensor plain = conv->forward(x);
  const torch::Tensor other = torch::randn_like(conv->weight);
  conv->set_weight_override(other);
  EXPECT_TRUE(torch::equal(conv->quantized_weight(), other));
  EXPECT_FALSE(torch::allclose(conv->forward(x), plain));
  conv->set_weight_override({});
  EXPECT_TRUE(torch::equal(conv->forward(x), plain));
  // QDrop: about half of the elements keep their full-precision value.
  const torch::Tensor q = conv->quantize_input(x);
  conv->set_input_drop(0.5, at::make_generator<at::CPUGeneratorImpl>(3));
  const torch::Tensor dropped = conv->quantize_input(x);
  const double kept = dropped.eq(x).to(torch::kFloat).mean().item<double>();
  const double quantized = dropped.eq(q).to(torch::kFloat).mean().item<double>();
  EXPECT_GT(kept, 0.4);
  EXPECT_LT(kept, 0.6);
  EXPECT_NEAR(kept + quantized, 1.0, 0.05);  // every element is one or the other (a few are both)
  conv->set_input_drop(0);
  EXPECT_TRUE(torch::equal(conv->quantize_input(x), q));
  EXPECT_THROW_WITH(conv->set_input_drop(1), "input drop probability must be in [0, 1)");
}

}  // namespace
}  // namespace zsq::quant
