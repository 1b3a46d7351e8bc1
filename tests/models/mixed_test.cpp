// Mixed precision in the student and in extracted files: per-layer bit-widths, bit-packed fixed files
// (and the version-1 files before them), the integer path against the fake-quantized mix.
#include "framework/quant/bitplanes.h"
#include "framework/quant/integer.h"
#include "framework/quant/layers.h"
#include "models/mixed.h"

#include "tests/models/student_fixture.h"

namespace zsq::models {
namespace {

using test::error_of;

class MixedTest : public test::StudentFixture {
 protected:
  torch::Tensor logits(const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    return student_->forward(x);
  }
};

TEST(PackedCodes, RoundTripAndLayout) {
  // {-2, 1} at 2 bits: offsets {0, 3}, bits 0,0 then 1,1, least significant first: 0b1100.
  EXPECT_TRUE(torch::equal(quant::pack_codes(torch::tensor({-2, 1}), 2), torch::tensor({12}, torch::kUInt8)));
  // {3, -4, 0} at 3 bits: offsets {7, 0, 4} -> bits 111 000 001 (lsb first) -> 0b00000111, 0b1.
  EXPECT_TRUE(torch::equal(quant::pack_codes(torch::tensor({3, -4, 0}), 3), torch::tensor({7, 1}, torch::kUInt8)));
  for (const int64_t bits : {2, 3, 4, 5, 8, 12}) {
    const int64_t half = int64_t(1) << (bits - 1);
    const torch::Tensor codes = torch::randint(-half, half, {1001}, torch::kInt16);
    const torch::Tensor packed = quant::pack_codes(codes, bits);
    EXPECT_EQ(packed.numel(), (1001 * bits + 7) / 8);
    EXPECT_TRUE(torch::equal(quant::unpack_codes(packed, bits, 1001), codes)) << bits << " bits";
  }
  EXPECT_NE(error_of([] { quant::pack_codes(torch::tensor({2}), 2); }).find("do not fit 2 bits"), std::string::npos);
  EXPECT_NE(error_of([] { quant::unpack_codes(torch::zeros({3}, torch::kUInt8), 4, 7); }).find("cannot hold exactly"),
            std::string::npos);
}

TEST_F(MixedTest, OneLayerLoweredChangesThatLayerAndItsBatchNormOnly) {
  make({"resnet8", 1, 10, 8}, {2, 4, 8});
  const auto layers = mix_layers(*student_, meta_.input_shape);
  ASSERT_EQ(layers.size(), 10u);  // conv1, 3 blocks x 2, 2 downsamples, fc
  EXPECT_FALSE(layers.front().free);  // first and last at 8 bits whatever the model bit-width
  EXPECT_FALSE(layers.back().free);
  EXPECT_TRUE(layers[1].free);
  EXPECT_EQ(layers[1].macs, layers[1].weights * 28 * 28);  // stride 1, padding 1: every output position
  const torch::Tensor x = torch::randn({16, 1, 28, 28});
  // A uniform mix is the uniform model, bit for bit.
  set_mix(layers, uniform_mix(layers, 4));
  const torch::Tensor mixed4 = logits(x);
  EXPECT_TRUE(torch::equal(mixed4, student_logits(4, x)));
  Mix mix = uniform_mix(layers, 4);
  mix[2] = {2, 8};
  set_mix(layers, mix);
  EXPECT_EQ(layers[2].layer->weight_bits(), 2);
  EXPECT_EQ(layers[2].layer->activation_bits(), 8);
  EXPECT_EQ(layers[2].bn->bits(), 2);
  EXPECT_EQ(layers[3].layer->weight_bits(), 4);
  EXPECT_EQ(layers[3].bn->bits(), 4);
  EXPECT_FALSE(torch::equal(logits(x), mixed4));
  // Costs: the lowered layer's weights count 2 bits instead of 4, its BOPs 2 x 8 instead of 4 x 4.
  const MixCost u = mix_cost(layers, uniform_mix(layers, 4)), m = mix_cost(layers, mix);
  EXPECT_DOUBLE_EQ(u.bytes - m.bytes, std::ceil(layers[2].weights * 4 / 8.0) - std::ceil(layers[2].weights * 2 / 8.0));
  EXPECT_DOUBLE_EQ(m.bops - u.bops, static_cast<double>(layers[2].macs) * (2 * 8 - 4 * 4));
  EXPECT_EQ(mix_text(mix), "4,4,2/8,4,4,4,4,4,4,4");
  EXPECT_EQ(parse_mix(mix_text(mix), layers, {2, 4, 8}), mix);
  EXPECT_EQ(parse_mix("2", layers, {2, 4, 8}), uniform_mix(layers, 2));
  EXPECT_NE(error_of([&] { parse_mix("4,3", layers, {2, 4, 8}); }).find("expected one of the model's bit-widths (2,4,8)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse_mix("4,4", layers, {2, 4, 8}); }).find("has 2 entries; the model has 10"),
            std::string::npos);
}

// The extracted mixed model against the fake-quantized student in the same mix, for a CIFAR ResNet and a
// torchvision-named ResNet-18; through a bit-packed file and back.
TEST_F(MixedTest, ExtractedMixPredictsLikeTheFakeQuantizedMix) {
  // The float path and the integer path sum in different orders, so an activation on a rounding tie can take
  // the neighbouring code; in ResNet-18's 21 quantized layers such flips add up to a few per cent of the
  // logits (uniform 4 bits as well: 0.019 of 0.41), while the predictions stay the same.
  struct Case {
    ModelSpec spec;
    int64_t channels, size;
    double tolerance;
  };
  for (const Case& c : {Case{{"resnet8", 1, 10, 8}, 1, 28, 1e-3}, Case{{"resnet18", 3, 10}, 3, 32, 0.1}}) {
    SCOPED_TRACE(c.spec.arch);
    config_ = {};
    make(c.spec, {2, 3, 4, 8}, c.size);
    const auto layers = mix_layers(*student_, meta_.input_shape);
    Mix mix = uniform_mix(layers, 8);
    const int64_t choices[] = {2, 3, 4, 8};
    for (size_t i = 0; i < mix.size(); ++i) mix[i] = {choices[i % 4], choices[(i * 7 + 1) % 4]};
    const torch::Tensor x = torch::randn({32, c.channels, c.size, c.size});
    set_mix(layers, mix);
    const torch::Tensor want = logits(x);
    Classifier integer = extract_mixed(*student_, spec_, config_, layers, mix);
    save_fixed(path("mixed.h5"), integer, meta_, config_, 8, mix_text(mix));
    Classifier loaded = load_integer_model(path("mixed.h5"));
    torch::NoGradGuard no_grad;
    for (const Classifier& m : {integer, loaded}) {
      const torch::Tensor got = m->forward(x);
      EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1)));
      EXPECT_LT((got - want).abs().max().item<float>(), c.tolerance * want.abs().max().item<float>() + 1e-4);
    }
    const h5::File file = h5::File::open_read(path("mixed.h5"));
    EXPECT_EQ(file.attr_string("mix").value_or(""), mix_text(mix));
    EXPECT_NE(error_of([&] { load_integer_model(path("mixed.h5"), 4); }).find("is a mixed-precision model"),
              std::string::npos);
  }
}

// Version 2 stores the codes bit-packed: a 2-bit file's codes take a quarter of the 8-bit file's; files of
// version 1 (int8 codes) still load and give the same model.
TEST_F(MixedTest, FixedFilesArePackedAndVersionOneStillReads) {
  make({"resnet8", 1, 10, 8}, {2, 8});
  const torch::Tensor x = torch::randn({16, 1, 28, 28});
  std::map<int64_t, int64_t> code_bytes;
  for (const int64_t b : {2, 8}) {
    Classifier integer = extract_fixed(*student_, spec_, config_, b);
    save_fixed(path("w.h5"), integer, meta_, config_, b);
    const h5::File file = h5::File::open_read(path("w.h5"));
    EXPECT_EQ(file.attr_int("version").value_or(0), 2);
    for (const std::string& name : file.dataset_names()) {
      EXPECT_EQ(name.find(".weight_codes", name.size() - 13), std::string::npos) << name << " is not packed";
      if (name.size() > 20 && name.compare(name.size() - 20, 20, ".weight_codes_packed") == 0) {
        code_bytes[b] += file.read_tensor(name).numel();
      }
    }
    // The same model as version 1 wrote it: unpacked codes, version 1, the same attributes.
    h5::atomic_write(path("v1.h5"), [&](h5::File& out) {
      for (const auto& [name, t] : named_state(*integer)) out.write_tensor(name, t);
      for (const char* key : {"format", "arch", "precision", "nesting"}) out.set_attr(key, *file.attr_string(key));
      for (const char* key : {"model_bits", "wbits", "abits", "input_shape"}) out.set_attr(key, *file.attr_ints(key));
      for (const char* key : {"first_last_bits", "top_bits", "bits", "num_classes", "width"}) {
        out.set_attr(key, *file.attr_int(key));
      }
      for (const char* key : {"input_mean", "input_std"}) out.set_attr(key, *file.attr_doubles(key));
      out.set_attr("version", int64_t(1));
    });
    torch::NoGradGuard no_grad;
    const torch::Tensor want = integer->forward(x);
    EXPECT_TRUE(torch::equal(load_integer_model(path("w.h5"))->forward(x), want));
    EXPECT_TRUE(torch::equal(load_integer_model(path("v1.h5"))->forward(x), want));
  }
  // The middle layers' 2-bit codes take a quarter of their 8-bit bytes; first and last stay 8-bit.
  EXPECT_LT(code_bytes[2], code_bytes[8] / 2);
}

} // namespace
} // namespace zsq::models
