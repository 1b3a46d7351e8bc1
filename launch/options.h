// Option groups and readers shared by the zsq commands (launch/*.cpp): each
// command file declares its options from these groups and turns them into the
// library's option structs. User errors throw UsageError (exit 2).
#pragma once

#include "framework/data.h"
#include "generators/synthesizer.h"
#include "launch/cli.h"
#include "models/quant_factory.h"
#include "trainers/evaluate.h"

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace zsq::cli {

template <typename T>
T get(const po::variables_map& vm, const char* name) {
  return vm[name].as<T>();
}

Split parse_split(const std::string& text);

std::string percent(double fraction);

// "key = value" lines of a resolved config.
std::map<std::string, std::string> config_values(const std::string& text);

/// A resumed run must train with the recipe it started with (`stored`, the
/// INI text in its checkpoint): throws UsageError listing every option of
/// `now` that differs, except the `free` ones, which do not change the numbers.
/// An option the checkpoint does not know (added to zsq after it was written)
/// matches when it is left at its default.
void check_same_recipe(const std::string& checkpoint, const std::string& stored, const std::string& now,
                       const po::variables_map& vm, const std::set<std::string>& free);

void add_data_options(po::options_description& desc, const char* default_data);

// Flags that describe a model file lacking attributes (e.g. a torchvision export).
void add_model_overrides(po::options_description& desc);

trainers::ModelOverrides read_overrides(const po::variables_map& vm);

void check_output_folder(const std::string& out);

void add_student_options(po::options_description& desc);

models::StudentConfig read_student_config(const po::variables_map& vm);

// How the quantizers start (init-student, quantize).
void add_quant_init_options(po::options_description& desc);

models::QuantizerInit read_quant_init(const po::variables_map& vm);

// Throws UsageError unless --input-range is pixel or calibrated.
void check_input_range(const po::variables_map& vm);

// The labelled test set --eval-data names (with --data-dir), read and checked against the model before any
// work starts; nullopt for 'none'.
std::optional<Dataset> load_eval_data(const po::variables_map& vm, const ModelMeta& meta);

// --input-range pixel: the student's input range from the teacher's normalization of pixels in [0, 1].
void set_input_range(const po::variables_map& vm, const Normalization& norm, models::StudentConfig* config);

// BatchNorm re-estimation during calibration (init-student: none, shift; quantize: auto, absolute).
void add_bn_options(po::options_description& desc, const char* reestimate = "none", const char* mode = "shift");

// A bit-width option: none, all (the model's), or a list of the model's bit-widths.
std::vector<int64_t> read_bit_list(const po::variables_map& vm, const std::string& name,
                                   const models::StudentConfig& config);

// The model's bit-widths of `max_bits` or fewer. `auto` of --ce-weight: 2 or fewer (2-bit cross-entropy +1.1
// points on ResNet-20, 3-bit -0.4). `auto` of --bn-reestimate: kBnAutoMaxBits or fewer, with --bn-mode auto
// (center at 2 bits, align at 3: on ResNet-20 data-free, +2.0/+1.4 at W2A2 and +0.8/+1.4 at W3A3 over absolute
// re-estimation at 2 bits only, seeds 0/1, docs/RESULTS.md); the images' own statistics at 3 bits cost 3 points.
std::vector<int64_t> low_bits(const models::StudentConfig& config, int64_t max_bits = 2);
inline constexpr int64_t kBnAutoMaxBits = 3;

// ", cross-entropy ×w at bits ..." for the header line ("" when off everywhere); weights in ascending bit order.
std::string ce_text(const std::vector<double>& weights, std::vector<int64_t> bits);

// A list of one value per bit-width in --bits order (or, with `one_for_all`, a single value for
// every bit-width), returned as the trainer takes it: in ascending bit order. Empty if not given.
std::vector<double> read_per_bit_values(const po::variables_map& vm, const std::string& name,
                                        const models::StudentConfig& config, bool one_for_all);

// --bn-reestimate and --bn-mode: the bit-widths, and how each re-estimates (one mode for all of them, or
// one per bit-width in --bn-reestimate's order).
struct BnOptions {
  std::vector<int64_t> bits;
  std::vector<models::BnEstimate> modes;
};
BnOptions read_bn_options(const po::variables_map& vm, const models::StudentConfig& config);

void add_synth_options(po::options_description& desc, const std::string& prefix);

void read_synth_options(const po::variables_map& vm, const std::string& prefix, generators::SynthesizerOptions* out);

} // namespace zsq::cli
