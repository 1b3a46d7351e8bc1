#include "framework/model_file.h"

#include "tests/support.h"
#include "trainers/evaluate.h"

namespace zsq::trainers {
namespace {

using ModelFileTest = test::SeedingFixture;

ModelMeta meta_for(const std::string& arch, int64_t width = 16) {
  ModelMeta meta;
  meta.arch = arch;
  meta.num_classes = 10;
  meta.input_shape = {1, 12, 12};
  meta.input_mean = {0.3};
  meta.input_std = {0.4};
  meta.width = width;
  meta.recipe = "arch = " + arch + "\n";
  return meta;
}

models::Classifier trained_looking(const std::string& arch, int64_t width = 16) {
  auto model = models::build({arch, 1, 10, width}, models::Fp32Factory());
  torch::NoGradGuard no_grad;
  for (auto& b : model->buffers()) {
    if (b.is_floating_point()) b.uniform_(0.5, 1.5);
  }
  return model;
}

TEST_F(ModelFileTest, SaveLoadGivesTheSameModel) {
  auto model = trained_looking("resnet8");
  model->eval();
  save_model(path("m.h5"), *model, meta_for("resnet8"));
  const LoadedModel loaded = load_model(path("m.h5"));
  EXPECT_EQ(loaded.meta.arch, "resnet8");
  EXPECT_EQ(loaded.meta.format, kModelFormat);
  EXPECT_EQ(loaded.meta.version, kModelFormatVersion);
  EXPECT_EQ(loaded.meta.input_shape, (std::vector<int64_t>{1, 12, 12}));
  EXPECT_EQ(loaded.meta.recipe, "arch = resnet8\n");
  EXPECT_EQ(loaded.norm().mean, std::vector<double>{0.3});
  const torch::Tensor x = torch::randn({4, 1, 12, 12});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(loaded.model->forward(x), model->forward(x)));
  // Every state entry is a dataset named by module path, like a state_dict.
  const h5::File file = h5::File::open_read(path("m.h5"));
  EXPECT_EQ(file.dataset_names().size(), named_state(*model).size());
  EXPECT_TRUE(file.has("layer2.0.downsample.1.running_var"));
  EXPECT_EQ(file.dtype("bn1.num_batches_tracked"), torch::kInt64);
}

TEST_F(ModelFileTest, MismatchesAreNamed) {
  save_model(path("r8.h5"), *trained_looking("resnet8"), meta_for("resnet8"));
  ModelOverrides o;
  o.arch = "resnet20";
  EXPECT_THROW_WITH(load_model(path("r8.h5"), o), "holds a 'resnet8' model, but --arch says 'resnet20'");
  // Lie about the architecture: the loader lists what does not match.
  save_model(path("lie.h5"), *trained_looking("resnet8"), meta_for("resnet20"));
  EXPECT_THROW_WITH(load_model(path("lie.h5")), "missing tensor 'layer1.1.bn1.bias'");
  // Wrong width: shapes are named.
  save_model(path("w8.h5"), *trained_looking("resnet8", 8), meta_for("resnet8", 16));
  EXPECT_THROW_WITH(load_model(path("w8.h5")), "'bn1.bias' has shape [8] in the file, the model expects [16]");
  // A non-model HDF5 file.
  h5::atomic_write(path("other.h5"), [](h5::File& f) {
    f.write_tensor("x", torch::zeros({1}));
    f.set_attr("format", std::string("zsq-checkpoint"));
  });
  EXPECT_THROW_WITH(load_model(path("other.h5")), "is a 'zsq-checkpoint' file, not a model file");
  // An extra tensor is an error too.
  auto model = trained_looking("resnet8");
  h5::atomic_write(path("extra.h5"), [&](h5::File& f) {
    for (const auto& [name, t] : named_state(*model)) f.write_tensor(name, t);
    f.write_tensor("head.weight", torch::zeros({2}));
    f.set_attr("arch", std::string("resnet8"));
    f.set_attr("num_classes", int64_t{10});
    f.set_attr("input_shape", std::vector<int64_t>{1, 12, 12});
  });
  EXPECT_THROW_WITH(load_model(path("extra.h5")), "unexpected tensor 'head.weight'");
}

TEST_F(ModelFileTest, DataMustFitTheModel) {
  const ModelMeta meta = meta_for("resnet8");
  Dataset data;
  data.name = "d";
  data.images = torch::zeros({3, 3, 12, 12}, torch::kUInt8);
  data.labels = torch::tensor({0, 1, 2});
  EXPECT_THROW_WITH(check_data_fits(meta, data), "has images of shape [3, 12, 12], the model expects [1, 12, 12]");
  data.images = torch::zeros({3, 1, 12, 12}, torch::kUInt8);
  data.labels = torch::tensor({0, 1, 12});
  EXPECT_THROW_WITH(check_data_fits(meta, data), "has labels up to 12");
}

} // namespace
} // namespace zsq::trainers
