// Model files: one HDF5 dataset per parameter/buffer, named by module path as
// in a PyTorch state_dict, plus root attributes saying what the file is and
// how to feed it. A torchvision state_dict written entry by entry with h5py
// is a valid model file without the attributes (the command line supplies
// them).
#pragma once

#include "framework/h5.h"

#include <torch/nn/module.h>

#include <string>
#include <vector>

namespace zsq {

inline constexpr const char* kModelFormat = "zsq-model";
inline constexpr int64_t kModelFormatVersion = 1;

/// Root attributes of a model file. Empty / zero fields are "not stated".
struct ModelMeta {
  std::string arch;                  ///< e.g. "resnet20"
  int64_t num_classes = 0;
  std::vector<int64_t> input_shape;  ///< C, H, W
  std::vector<double> input_mean;    ///< per channel, pixels in [0,1]
  std::vector<double> input_std;
  int64_t width = 0;                 ///< base width of CIFAR-style ResNets (0: default)
  std::string format;                ///< kModelFormat for files we write
  int64_t version = 0;
  std::string precision;             ///< "fp32" for teachers
  std::string recipe;                ///< the INI text the model was made with
};

/// Reads the root attributes (missing ones stay empty). Checks `format` and
/// `version` when present.
ModelMeta read_model_meta(const h5::File& file);

/// The root attributes without checking `format` (for the other ZSQ file kinds).
ModelMeta read_meta_attrs(const h5::File& file);
/// Writes meta's attributes except `format` and `version`.
void write_meta_attrs(h5::File& file, const ModelMeta& meta);

/// Writes every parameter and buffer of `module` and `meta` atomically.
void save_model(const std::string& path, const torch::nn::Module& module, const ModelMeta& meta);

/// Copies the tensors of `file` into `module` by name. Every parameter and
/// buffer must be present with the same shape; extra datasets are an error
/// unless listed in `ignore` (an entry ending in '/' ignores that whole group,
/// e.g. "train/" for a checkpoint's training state). Throws one message
/// listing every mismatch.
void load_state(const h5::File& file, torch::nn::Module& module, const std::vector<std::string>& ignore = {});

/// The named tensors (parameters, then buffers) in name order.
std::vector<std::pair<std::string, torch::Tensor>> named_state(const torch::nn::Module& module);

} // namespace zsq
