// Evaluation of a classifier on a labelled data set, and loading a model file
// into a zoo model with every check a user needs.
#pragma once

#include "framework/data.h"
#include "framework/model_file.h"
#include "models/zoo.h"

#include <string>

namespace zsq::trainers {

struct EvalResult {
  double top1 = 0;    ///< fraction in [0,1]
  double loss = 0;    ///< mean cross-entropy
  int64_t count = 0;  ///< images evaluated
  double seconds = 0;
  torch::Tensor logits;  ///< N x classes, float32, in data order (only when asked for)
};

/// Top-1 accuracy and mean cross-entropy of `model` (put in eval mode) on
/// `data`, normalized with `norm`, in batches of `batch_size`; with
/// `keep_logits`, also every image's logits.
EvalResult evaluate(models::ClassifierImpl& model, const Dataset& data, const Normalization& norm,
                    int64_t batch_size = 256, bool keep_logits = false);

/// What the command line may add to (or override in) a model file's
/// attributes; empty fields leave the file's value.
struct ModelOverrides {
  std::string arch;
  int64_t num_classes = 0;
  std::vector<int64_t> input_shape;
  std::vector<double> input_mean, input_std;
  int64_t width = 0;
  /// Bit-width to rebuild from a vertical-layered file (0: none given).
  int64_t bits = 0;
};

/// A model loaded from a file, with the metadata it was built from.
struct LoadedModel {
  models::Classifier model;
  ModelMeta meta;        ///< with overrides applied and every field filled
  Normalization norm() const { return {meta.input_mean, meta.input_std}; }
  /// The zoo spec the model was built from (width 16 where the file has none).
  models::ModelSpec spec() const {
    return {meta.arch, meta.input_shape.at(0), meta.num_classes, meta.width > 0 ? meta.width : 16};
  }
};

/// Opens `path`, builds its architecture (from the file or `overrides`) and
/// loads every tensor, checking names and shapes. FP32 model files give the
/// zoo model; extracted files (zsq-fixed, zsq-vertical at overrides.bits)
/// the integer reference model. Missing metadata that
/// cannot be inferred is a clear error naming the flag that supplies it.
LoadedModel load_model(const std::string& path, const ModelOverrides& overrides = {});

/// Throws unless `data`'s images have the model's input shape and its labels
/// fit the model's classes.
void check_data_fits(const ModelMeta& meta, const Dataset& data);

} // namespace zsq::trainers
