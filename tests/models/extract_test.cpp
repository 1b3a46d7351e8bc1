// Extraction: fixed-precision integer models and vertical-layered files
// against the fake-quantized student they come from.
#include "framework/quant/integer.h"
#include "models/extract.h"

#include "tests/models/student_fixture.h"

namespace zsq::models {
namespace {

using test::error_of;

class ExtractTest : public test::StudentFixture {};

TEST_F(ExtractTest, IntegerLayerByHand) {
  quant::IntLayer layer(quant::IntLayerOptions(2, 1).conv(false).weight_bits(3));
  layer->weight_codes.copy_(torch::tensor({{1, -2}}, torch::kInt8));
  layer->weight_shift.fill_(1);
  layer->weight_offset.fill_(1);  // levels 4q + 1: 5, -7
  layer->act_step.fill_(0.5);
  layer->act_range.copy_(torch::tensor({0, 15}));
  layer->scale.fill_(0.1);
  layer->bias.fill_(0.2);
  const torch::Tensor x = torch::tensor({{1.0f, 0.74f}, {-3.0f, 100.0f}});  // codes (2, 1) and (0, 15)
  EXPECT_TRUE(torch::equal(layer->accumulate(x), torch::tensor({{3}, {-105}})));
  EXPECT_TRUE(torch::allclose(layer->forward(x), torch::tensor({{0.5f}, {-10.3f}})));
  // Sums beyond float32's exact integers take the float64 path and stay exact.
  quant::IntLayer wide(quant::IntLayerOptions(1, 1).conv(false).weight_bits(16));
  wide->weight_codes.fill_(12345);  // level 2·12345
  wide->act_range.copy_(torch::tensor({0, 30000}));
  EXPECT_EQ(wide->accumulate(torch::tensor({{29999.0f}})).item<int64_t>(), int64_t(29999) * 24690);
}

TEST_F(ExtractTest, IntegerPathPredictsLikeTheFakeQuantizedStudent) {
  make({"resnet8", 1, 10, 8}, {2, 3, 4, 8});
  const torch::Tensor x = torch::randn({64, 1, 28, 28});
  for (const int64_t b : {2, 3, 4, 8}) {
    SCOPED_TRACE("bits " + std::to_string(b));
    const torch::Tensor want = student_logits(b, x);
    Classifier integer = extract_fixed(*student_, spec_, config_, b);
    torch::NoGradGuard no_grad;
    const torch::Tensor got = integer->forward(x);
    EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1)));
    EXPECT_LT((got - want).abs().max().item<float>(), 1e-3 * want.abs().max().item<float>() + 1e-4);
    // Stored codes fit the bit-width.
    auto* layer = dynamic_cast<quant::IntLayerImpl*>(integer->named_modules()["layer1.0.conv1"].get());
    ASSERT_TRUE(layer);
    EXPECT_EQ(layer->weight_codes.scalar_type(), torch::kInt8);
    EXPECT_GE(layer->weight_codes.min().item<int64_t>(), -(int64_t(1) << (b - 1)));
    EXPECT_LE(layer->weight_codes.max().item<int64_t>(), (int64_t(1) << (b - 1)) - 1);
  }
}

// Every layer quantized alike, the first layer's input codes from the known pixel range (asymmetric:
// codes [-z, 2^b - 1 - z]): the integer path, the vertical file and the student file keep it exactly.
TEST_F(ExtractTest, AllLayersQuantizedWithAKnownInputRange) {
  config_.first_bits = config_.last_bits = StudentConfig::kSameBits;
  config_.input_range = pixel_input_range({0.5}, {0.25});  // meta_'s normalization: [-2, 2]
  make({"resnet8", 1, 10, 8}, {2, 3, 4, 8});
  const torch::Tensor x = (torch::rand({64, 1, 28, 28}) - 0.5) / 0.25;
  save_vertical(path("vl.h5"), *student_, spec_, config_, meta_);
  save_student(path("student.h5"), *student_, config_, meta_);
  LoadedStudent loaded = load_student(path("student.h5"));
  EXPECT_EQ(loaded.config.input_range, config_.input_range);
  EXPECT_EQ(loaded.config.first_last_text(), "same");
  EXPECT_EQ(loaded.config.input_bits, StudentConfig::kSameBits);
  loaded.model->eval();
  for (const int64_t b : {2, 3, 4, 8}) {
    SCOPED_TRACE("bits " + std::to_string(b));
    const torch::Tensor want = student_logits(b, x);
    Classifier integer = extract_fixed(*student_, spec_, config_, b);
    auto* first = dynamic_cast<quant::IntLayerImpl*>(integer->named_modules()["conv1"].get());
    ASSERT_TRUE(first);
    const int64_t zero = -first->act_range[0].item<int64_t>();
    EXPECT_GT(zero, 0);
    EXPECT_EQ(first->act_range[1].item<int64_t>(), (int64_t(1) << b) - 1 - zero);
    torch::NoGradGuard no_grad;
    const torch::Tensor got = integer->forward(x);
    EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1)));
    // A code at a rounding tie may differ between the fused kernel's x/s and the integer path's (dense
    // pixel-like inputs at 8 bits): a few 1e-3 of the logits' scale.
    EXPECT_LT((got - want).abs().max().item<float>(), 3e-3 * want.abs().max().item<float>() + 1e-4);
    Classifier rebuilt = load_integer_model(path("vl.h5"), b);
    EXPECT_TRUE(torch::equal(rebuilt->forward(x), got));
    set_bits(*loaded.model, b);
    EXPECT_TRUE(torch::equal(loaded.model->forward(x), want));
  }
}

// --input-bits 8 with every other layer at 2 or 4 bits: the first layer's input keeps 256 codes in the
// integer path, and the files carry the setting back.
TEST_F(ExtractTest, InputBitsReachTheIntegerPathAndTheFiles) {
  config_.first_bits = config_.last_bits = StudentConfig::kSameBits;
  config_.input_bits = 8;
  config_.input_range = pixel_input_range({0.5}, {0.25});
  make({"resnet8", 1, 10, 8}, {2, 4});
  const torch::Tensor x = (torch::rand({32, 1, 28, 28}) - 0.5) / 0.25;
  save_vertical(path("vl.h5"), *student_, spec_, config_, meta_);
  save_student(path("student.h5"), *student_, config_, meta_);
  EXPECT_EQ(load_student(path("student.h5")).config.input_bits, 8);
  for (const int64_t b : {2, 4}) {
    SCOPED_TRACE("bits " + std::to_string(b));
    const torch::Tensor want = student_logits(b, x);
    Classifier rebuilt = load_integer_model(path("vl.h5"), b);
    auto* first = dynamic_cast<quant::IntLayerImpl*>(rebuilt->named_modules()["conv1"].get());
    auto* middle = dynamic_cast<quant::IntLayerImpl*>(rebuilt->named_modules()["layer1.0.conv1"].get());
    ASSERT_TRUE(first && middle);
    EXPECT_EQ(first->act_range[1].item<int64_t>() - first->act_range[0].item<int64_t>(), 255);
    EXPECT_EQ(middle->act_range[1].item<int64_t>() - middle->act_range[0].item<int64_t>(), (int64_t(1) << b) - 1);
    torch::NoGradGuard no_grad;
    const torch::Tensor got = rebuilt->forward(x);
    EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1)));
  }
}

TEST_F(ExtractTest, FixedFilesRoundTrip) {
  make({"resnet8", 1, 10, 8}, {2, 4});
  const torch::Tensor x = torch::randn({16, 1, 28, 28});
  Classifier integer = extract_fixed(*student_, spec_, config_, 4);
  save_fixed(path("w4.h5"), integer, meta_, config_, 4);
  Classifier loaded = load_integer_model(path("w4.h5"));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(loaded->forward(x), integer->forward(x)));
  const h5::File file = h5::File::open_read(path("w4.h5"));
  EXPECT_EQ(file.attr_string("precision").value_or(""), "w4a4");
  EXPECT_EQ(file.dtype("layer1.0.conv1.weight_codes_packed"), torch::kUInt8);
  EXPECT_NE(error_of([&] { load_integer_model(path("w4.h5"), 2); }).find("is a fixed 4-bit model"), std::string::npos);
}

TEST_F(ExtractTest, VerticalLayeredFileRebuildsEveryBitWidth) {
  make({"resnet8", 1, 10, 8}, {2, 3, 4, 8});
  save_vertical(path("vl.h5"), *student_, spec_, config_, meta_);
  const h5::File file = h5::File::open_read(path("vl.h5"));
  // A middle layer keeps 2-bit basic codes and one packed plane per extra bit.
  EXPECT_EQ(file.dtype("layer1.0.conv1.weight_plane_b3"), torch::kUInt8);
  EXPECT_EQ(file.shape("layer1.0.conv1.weight_plane_b3")[0], (8 * 8 * 9 + 7) / 8);
  EXPECT_FALSE(file.has("layer1.0.conv1.weight_plane_b9"));
  const torch::Tensor x = torch::randn({16, 1, 28, 28});
  for (const int64_t b : {2, 3, 4, 8}) {
    SCOPED_TRACE("bits " + std::to_string(b));
    Classifier direct = extract_fixed(*student_, spec_, config_, b);
    Classifier rebuilt = load_integer_model(path("vl.h5"), b);
    for (const auto& item : direct->named_buffers()) {
      EXPECT_TRUE(torch::equal(item.value(), rebuilt->named_buffers()[item.key()])) << item.key();
    }
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(rebuilt->forward(x), direct->forward(x)));
  }
  EXPECT_NE(error_of([&] { load_integer_model(path("vl.h5")); }).find("choose a bit-width with --bits (one of 2,3,4,8)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_integer_model(path("vl.h5"), 5); }).find("bit-width 5 is not one of the model's"),
            std::string::npos);
}

TEST_F(ExtractTest, MobileNetV2WithDepthwiseLayers) {
  make({"mobilenet_v2", 3, 5}, {4, 8}, 32);
  const torch::Tensor x = torch::randn({4, 3, 32, 32});
  const torch::Tensor want = student_logits(4, x);
  Classifier integer = extract_fixed(*student_, spec_, config_, 4);
  torch::NoGradGuard no_grad;
  const torch::Tensor got = integer->forward(x);
  EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1)));
  EXPECT_LT((got - want).abs().max().item<float>(), 1e-3 * want.abs().max().item<float>() + 1e-4);
}

TEST_F(ExtractTest, ClearErrors) {
  make({"resnet8", 1, 10, 8}, {2, 4});
  save_model(path("teacher.h5"), *teacher_, meta_);
  EXPECT_NE(error_of([&] { load_integer_model(path("teacher.h5"), 4); }).find("is not an extracted model"),
            std::string::npos);
  StudentConfig round = config_;
  round.nesting = quant::Nesting::kRound;
  EXPECT_NE(error_of([&] { save_vertical(path("x.h5"), *student_, spec_, round, meta_); }).find("need shift nesting"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(path("x.h5")));
}

} // namespace
} // namespace zsq::models
