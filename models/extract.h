// Extraction from a once-for-all student:
//  - a fixed-precision integer model for one bit-width (zsq-fixed file):
//    integer weight codes, steps, the BN of that bit-width folded into a
//    per-channel scale and bias, input steps; evaluated by the integer
//    reference path (framework/quant/integer.h);
//  - the vertical-layered form (zsq-vertical file): per layer the basic
//    layer (codes at its lowest bit-width) plus one packed bit-plane per extra
//    bit, and per bit-width the input steps and folded BN; any bit-width's
//    fixed model is rebuilt from it bit-exactly.
// The integer model is the zoo's architecture built with IntegerFactory:
// every convolution and linear layer an IntLayer, every BatchNorm an
// identity (folded into the layer before it).
#pragma once

#include "framework/model_file.h"
#include "models/quant_factory.h"
#include "models/zoo.h"

#include <string>

namespace zsq::models {

inline constexpr const char* kFixedFormat = "zsq-fixed";
inline constexpr const char* kVerticalFormat = "zsq-vertical";
inline constexpr const char* kStudentFormat = "zsq-student";
/// The group of a checkpoint (a zsq-student file) that holds the training
/// state: optimizer, generator, RNG states, start codes (trainers/checkpoint.h).
inline constexpr const char* kTrainingStateGroup = "train/";
inline constexpr int64_t kExtractFormatVersion = 2;  // 2: fixed files hold bit-packed codes

/// A quantized layer of the student with the BatchNorm that follows it (null when none), in module order.
/// Every BatchNorm follows its convolution in registration order in every architecture of the zoo; the
/// pairing is checked by channel count.
struct LayerPair {
  std::string name;
  quant::QuantizedLayer* layer = nullptr;
  torch::Tensor layer_bias;  ///< undefined when the layer has none
  quant::SwitchableBatchNorm2dImpl* bn = nullptr;
};
std::vector<LayerPair> pair_layers(torch::nn::Module& student);

/// Writes the whole student (latent weights, steps, every per-bit BN and
/// input step) and how it was built, atomically, as a zsq-student file.
void save_student(const std::string& path, const torch::nn::Module& student, const StudentConfig& config,
                  const ModelMeta& meta);

/// Writes the student's tensors and zsq-student attributes into an open file
/// (what save_student writes; a checkpoint adds its training state to it).
void write_student(h5::File& file, const torch::nn::Module& student, const StudentConfig& config,
                   const ModelMeta& meta);

/// A student read back from a zsq-student file.
struct LoadedStudent {
  Classifier model;
  ModelSpec spec;
  StudentConfig config;
  ModelMeta meta;
};
LoadedStudent load_student(const std::string& path);

/// Builds integer layers whose weight bits follow `config` at model bit-width `bits`.
class IntegerFactory : public LayerFactory {
 public:
  IntegerFactory(StudentConfig config, int64_t bits);
  torch::nn::AnyModule conv2d(const ConvSpec& spec) const override;
  torch::nn::AnyModule linear(const LinearSpec& spec) const override;
  torch::nn::AnyModule batch_norm(int64_t num_features) const override;

 private:
  int64_t weight_bits(LayerRole role) const;
  StudentConfig config_;
  size_t index_;
};

/// The integer model of `student` at model bit-width `bits` (student in any
/// mode; BatchNorm uses its running statistics). `spec` must be the one the
/// student was built with.
Classifier extract_fixed(torch::nn::Module& student, const ModelSpec& spec, const StudentConfig& config,
                         int64_t bits);

/// The integer model of `student` as its layers and BatchNorms are switched now (set_bits or a mix);
/// `code_bits`: the model bit-width whose weight bits size the code type (the highest one in use).
Classifier extract_as_set(torch::nn::Module& student, const ModelSpec& spec, const StudentConfig& config,
                          int64_t code_bits);

/// Writes an integer model as a zsq-fixed file (atomically; version 2: codes bit-packed). meta describes
/// the input (arch, classes, shape, normalization). A mixed-precision model passes its mix (mix_text) and
/// as `bits` the model bit-width that sized its codes (extract_as_set's code_bits).
void save_fixed(const std::string& path, const Classifier& model, const ModelMeta& meta, const StudentConfig& config,
                int64_t bits, const std::string& mix = "");

/// Writes the vertical-layered form of `student` (shift nesting only).
void save_vertical(const std::string& path, torch::nn::Module& student, const ModelSpec& spec,
                   const StudentConfig& config, const ModelMeta& meta);

/// What an extracted file holds and how to rebuild it.
struct ExtractedFile {
  std::string format;  ///< kFixedFormat, kVerticalFormat (or kStudentFormat)
  ModelMeta meta;
  ModelSpec spec;
  StudentConfig config;
  int64_t bits = 0;  ///< the fixed file's bit-width (0 for vertical files; a mixed file's widest)
  std::string mix;   ///< a mixed-precision fixed file's configuration (mix_text), else empty
};

/// Reads and checks the attributes of a zsq-fixed or zsq-vertical file
/// (also of a zsq-student file when `allow_student`).
ExtractedFile read_extracted(const h5::File& file, bool allow_student = false);

/// The integer model stored in a zsq-fixed file, or rebuilt from a
/// zsq-vertical file at model bit-width `bits` (required for vertical files,
/// must match or be 0 for fixed files).
Classifier load_integer_model(const std::string& path, int64_t bits = 0);

using quant::bits_text;  // "2,3,4,8"

} // namespace zsq::models
