#include "trainers/evaluate.h"

#include "models/extract.h"

#include <chrono>

#include <torch/torch.h>

namespace zsq::trainers {

EvalResult evaluate(models::ClassifierImpl& model, const Dataset& data, const Normalization& norm,
                    int64_t batch_size, bool keep_logits) {
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  model.eval();
  LoaderOptions options;
  options.batch_size = batch_size;
  options.shuffle = false;
  BatchLoader loader(data, norm, options);
  int64_t correct = 0, seen = 0;
  double loss_sum = 0;
  std::vector<torch::Tensor> kept;
  for (int64_t b = 0; b < loader.num_batches(); ++b) {
    const Batch batch = loader.batch(b);
    const torch::Tensor logits = model.forward(batch.images);
    TORCH_CHECK(logits.dim() == 2 && logits.size(1) > batch.labels.max().item<int64_t>(),
                "the model has ", logits.size(1), " classes, the data has label ", batch.labels.max().item<int64_t>());
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, batch.labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    correct += logits.argmax(1).eq(batch.labels).sum().item<int64_t>();
    seen += batch.labels.size(0);
    if (keep_logits) kept.push_back(logits.to(torch::kFloat32));
  }
  EvalResult result;
  result.count = seen;
  result.top1 = seen ? static_cast<double>(correct) / seen : 0;
  result.loss = seen ? loss_sum / seen : 0;
  if (keep_logits) result.logits = kept.empty() ? torch::zeros({0, 0}) : torch::cat(kept);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

LoadedModel load_model(const std::string& path, const ModelOverrides& o) {
  h5::File file = h5::File::open_read(path);
  LoadedModel out;
  ModelMeta& meta = out.meta;
  const std::string format = file.attr_string("format").value_or("");
  TORCH_CHECK(format != models::kStudentFormat, "'", path,
              "' is a once-for-all student; evaluate it with --checkpoint, or extract a model from it");
  if (format == models::kFixedFormat || format == models::kVerticalFormat) {
    meta = models::read_extracted(file).meta;
    TORCH_CHECK(o.arch.empty() || o.arch == meta.arch, "'", path, "' holds a '", meta.arch,
                "' model, but --arch says '", o.arch, "'");
    if (!o.input_mean.empty()) meta.input_mean = o.input_mean;
    if (!o.input_std.empty()) meta.input_std = o.input_std;
    const int64_t channels = meta.input_shape.at(0);
    if (meta.input_mean.empty()) meta.input_mean = std::vector<double>(channels, 0.0);
    if (meta.input_std.empty()) meta.input_std = std::vector<double>(channels, 1.0);
    out.norm().check(channels);
    file.close();
    out.model = models::load_integer_model(path, o.bits);
    return out;
  }
  TORCH_CHECK(o.bits == 0, "--bits applies to vertical-layered files; '", path, "' is an FP32 model");
  meta = read_model_meta(file);
  TORCH_CHECK(meta.precision.empty() || meta.precision == "fp32", "'", path, "' holds a '", meta.precision,
              "' model; this command expects an FP32 model");
  if (!o.arch.empty()) {
    TORCH_CHECK(meta.arch.empty() || meta.arch == o.arch, "'", path, "' holds a '", meta.arch,
                "' model, but --arch says '", o.arch, "'");
    meta.arch = o.arch;
  }
  TORCH_CHECK(!meta.arch.empty(), "'", path, "' does not say its architecture; pass --arch");
  if (o.num_classes > 0) meta.num_classes = o.num_classes;
  if (!o.input_shape.empty()) meta.input_shape = o.input_shape;
  if (!o.input_mean.empty()) meta.input_mean = o.input_mean;
  if (!o.input_std.empty()) meta.input_std = o.input_std;
  if (o.width > 0) meta.width = o.width;
  // Infer what the tensors themselves say: classes from the last layer.
  if (meta.num_classes <= 0) {
    for (const char* name : {"fc.bias", "classifier.1.bias"}) {
      if (file.has(name)) meta.num_classes = file.shape(name).at(0);
    }
  }
  TORCH_CHECK(meta.num_classes > 1, "'", path, "' does not say its number of classes; pass --num-classes");
  TORCH_CHECK(meta.input_shape.size() == 3, "'", path,
              "' does not say its input shape; pass --input-shape C,H,W (e.g. 1,28,28)");
  for (int64_t d : meta.input_shape) TORCH_CHECK(d > 0, "input shape must be positive, got ", d);
  const int64_t channels = meta.input_shape[0];
  if (meta.input_mean.empty()) meta.input_mean = std::vector<double>(channels, 0.0);
  if (meta.input_std.empty()) meta.input_std = std::vector<double>(channels, 1.0);
  out.norm().check(channels);
  models::ModelSpec spec;
  spec.arch = meta.arch;
  spec.in_channels = channels;
  spec.num_classes = meta.num_classes;
  if (meta.width > 0) spec.width = meta.width;
  out.model = models::build(spec, models::Fp32Factory());
  load_state(file, *out.model);
  out.model->eval();
  return out;
}

void check_data_fits(const ModelMeta& meta, const Dataset& data) {
  TORCH_CHECK(data.size() > 0, "data set '", data.name, "' is empty");
  const auto shape = data.image_shape();
  TORCH_CHECK(shape == meta.input_shape, "data set '", data.name, "' has images of shape ",
              c10::IntArrayRef(shape), ", the model expects ", c10::IntArrayRef(meta.input_shape));
  TORCH_CHECK(data.num_classes() <= meta.num_classes, "data set '", data.name, "' has labels up to ",
              data.num_classes() - 1, ", the model has only ", meta.num_classes, " classes");
}

} // namespace zsq::trainers
