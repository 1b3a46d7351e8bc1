// Option groups and readers shared by the zsq commands (see options.h).
#include "launch/options.h"

#include "framework/data.h"
#include "framework/errors.h"
#include "generators/synthesizer.h"
#include "models/extract.h"
#include "models/quant_factory.h"
#include "trainers/evaluate.h"
#include "trainers/quantize.h"  // parse_bn_mode

#include <filesystem>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>

namespace zsq::cli {
namespace fs = std::filesystem;

Split parse_split(const std::string& text) {
  if (text == "train") return Split::kTrain;
  if (text == "test") return Split::kTest;
  throw UsageError("--split must be 'train' or 'test', got '" + text + "'");
}


std::string percent(double fraction) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(2) << 100.0 * fraction << "%";
  return out.str();
}

std::map<std::string, std::string> config_values(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const size_t eq = line.find(" = ");
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 3);
  }
  return out;
}

void add_data_options(po::options_description& desc, const char* default_data) {
  desc.add_options()
      ("data", po::value<std::string>()->default_value(default_data),
       "'fashion-mnist', an HDF5 data set (images N×C×H×W uint8/float, labels N) or an image folder (one "
       "sub-folder of PNG/JPEG files per class, labels in the sub-folders' sorted order)")
      ("data-dir", po::value<std::string>()->default_value(kFashionMnistDir),
       "folder with the Fashion-MNIST IDX files (.gz or plain)");
}

void add_model_overrides(po::options_description& desc) {
  desc.add_options()
      ("arch", po::value<std::string>(), "architecture, when the file does not say it")
      ("num-classes", po::value<int64_t>(), "number of classes, when the file does not say it")
      ("input-shape", po::value<std::string>(), "C,H,W of the input, when the file does not say it")
      ("input-mean", po::value<std::string>(), "per-channel mean of [0,1] pixels (overrides the file)")
      ("input-std", po::value<std::string>(), "per-channel std of [0,1] pixels (overrides the file)")
      ("width", po::value<int64_t>(), "base width of a CIFAR-style ResNet, when the file does not say it");
}

trainers::ModelOverrides read_overrides(const po::variables_map& vm) {
  trainers::ModelOverrides o;
  if (vm.count("arch")) o.arch = get<std::string>(vm, "arch");
  if (vm.count("num-classes")) {
    o.num_classes = get<int64_t>(vm, "num-classes");
    if (o.num_classes < 2) throw UsageError("--num-classes must be >= 2");
  }
  if (vm.count("input-shape")) {
    o.input_shape = parse_int_list(get<std::string>(vm, "input-shape"), "--input-shape");
    if (o.input_shape.size() != 3) throw UsageError("--input-shape expects C,H,W");
  }
  if (vm.count("input-mean")) o.input_mean = parse_double_list(get<std::string>(vm, "input-mean"), "--input-mean");
  if (vm.count("input-std")) o.input_std = parse_double_list(get<std::string>(vm, "input-std"), "--input-std");
  if (vm.count("width")) {
    o.width = get<int64_t>(vm, "width");
    if (o.width < 1) throw UsageError("--width must be >= 1");
  }
  return o;
}



void check_output_folder(const std::string& out) {
  const fs::path folder = fs::path(out).has_parent_path() ? fs::path(out).parent_path() : fs::path(".");
  if (!fs::is_directory(folder)) throw UsageError("output folder '" + folder.string() + "' does not exist");
}

void add_student_options(po::options_description& desc) {
  desc.add_options()
      ("bits", po::value<std::string>()->default_value("2,3,4,8"), "the model's bit-widths, comma-separated")
      ("wbits", po::value<std::string>(), "weight bits of the middle layers at each bit-width (default: --bits)")
      ("abits", po::value<std::string>(), "activation bits of the middle layers at each bit-width (default: --bits)")
      ("first-last-bits", po::value<std::string>()->default_value("8"),
       "weight and activation bits of the first and last layer: N, 'same' (the middle layers' bits at every "
       "bit-width: every layer quantized alike) or FIRST,LAST")
      ("input-bits", po::value<std::string>()->default_value("same"),
       "bits of the network input (the first layer's input) at every bit-width: N, or 'same' (the first layer's "
       "activation bits); 8 keeps 8-bit pixels exact, as GDFQ's code, which does not quantize the input")
      ("top-bits", po::value<int64_t>()->default_value(8), "precision of the stored weight codes (>= every weight bit-width)")
      ("nesting", po::value<std::string>()->default_value("shift"),
       "how lower weight codes nest in higher ones: shift (bit-planes) or round");
}

models::StudentConfig read_student_config(const po::variables_map& vm) {
  models::StudentConfig c;
  c.bits = parse_int_list(get<std::string>(vm, "bits"), "--bits");
  if (vm.count("wbits")) c.wbits = parse_int_list(get<std::string>(vm, "wbits"), "--wbits");
  if (vm.count("abits")) c.abits = parse_int_list(get<std::string>(vm, "abits"), "--abits");
  c.top_bits = get<int64_t>(vm, "top-bits");
  const std::string nesting = get<std::string>(vm, "nesting");
  if (nesting != "shift" && nesting != "round") throw UsageError("--nesting must be 'shift' or 'round', got '" + nesting + "'");
  c.nesting = quant::parse_nesting(nesting);
  try {
    std::tie(c.first_bits, c.last_bits) = models::parse_first_last_bits(get<std::string>(vm, "first-last-bits"));
    c.input_bits = models::parse_input_bits(get<std::string>(vm, "input-bits"));
    c.check();
  } catch (const c10::Error& e) {
    throw UsageError(e.what_without_backtrace());
  }
  return c;
}

void add_quant_init_options(po::options_description& desc) {
  desc.add_options()
      ("input-range", po::value<std::string>()->default_value("pixel"),
       "the first layer's input steps: pixel (set from the known range of pixels in [0, 1] under the model's "
       "normalization; neither calibrated nor trained) or calibrated (calibrated and trained like every other step)")
      ("weight-init", po::value<std::string>()->default_value("lsq"),
       "weight steps: lsq (LSQ's 2*mean|w|/sqrt(Qp) at the lowest weight bit-width) or mse (per channel, the least "
       "squared error summed over the layer's weight bit-widths; better for one bit-width, worse for a shared lattice)");
}

models::QuantizerInit read_quant_init(const po::variables_map& vm) {
  const std::string weight = get<std::string>(vm, "weight-init");
  if (weight != "mse" && weight != "lsq") throw UsageError("--weight-init must be 'mse' or 'lsq', got '" + weight + "'");
  check_input_range(vm);
  models::QuantizerInit init;
  init.weight_init = quant::parse_weight_init(weight);
  return init;
}

void check_input_range(const po::variables_map& vm) {
  const std::string range = get<std::string>(vm, "input-range");
  if (range != "pixel" && range != "calibrated") {
    throw UsageError("--input-range must be 'pixel' or 'calibrated', got '" + range + "'");
  }
}

std::optional<Dataset> load_eval_data(const po::variables_map& vm, const ModelMeta& meta) {
  const std::string name = get<std::string>(vm, "eval-data");
  if (name == "none") return std::nullopt;
  Dataset test = load_dataset(name, get<std::string>(vm, "data-dir"), Split::kTest, meta.input_shape);
  trainers::check_data_fits(meta, test);
  return test;
}

void set_input_range(const po::variables_map& vm, const Normalization& norm, models::StudentConfig* config) {
  if (get<std::string>(vm, "input-range") == "pixel") config->input_range = models::pixel_input_range(norm.mean, norm.std);
}

void add_bn_options(po::options_description& desc, const char* reestimate, const char* mode) {
  desc.add_options()
      ("bn-reestimate", po::value<std::string>()->default_value(reestimate),
       "bit-widths whose BatchNorm running statistics calibration re-estimates on its images through the "
       "quantized network: none, all, auto (the bit-widths of 3 or fewer) or a comma-separated list (e.g. 2)")
      ("bn-mode", po::value<std::string>()->default_value(mode),
       "re-estimation, one mode for every --bn-reestimate bit-width or one per bit-width (e.g. absolute,align): "
       "shift (the teacher's statistics moved by the quantized network's difference to the teacher "
       "on the images), absolute (the images' own statistics), align (per channel, the statistics whose normalized "
       "features are the least-squares fit of the teacher's on the same images), center (the images' variance, and "
       "the mean that puts the normalized features' mean where the teacher's is on the same images) or auto (center "
       "at 2 bits or fewer, align above)");
}

std::vector<int64_t> read_bit_list(const po::variables_map& vm, const std::string& name,
                                   const models::StudentConfig& config) {
  std::vector<int64_t> bits;
  const std::string text = get<std::string>(vm, name.c_str());
  if (text == "all") {
    bits = config.bits;
  } else if (text != "none") {
    bits = parse_int_list(text, "--" + name);
    for (const int64_t b : bits) {
      if (std::find(config.bits.begin(), config.bits.end(), b) == config.bits.end()) {
        throw UsageError("--" + name + " " + std::to_string(b) + ": not one of the model's bit-widths (" +
                         models::bits_text(config.bits) + ")");
      }
    }
  }
  std::sort(bits.begin(), bits.end());
  bits.erase(std::unique(bits.begin(), bits.end()), bits.end());
  return bits;
}

std::vector<int64_t> low_bits(const models::StudentConfig& config, int64_t max_bits) {
  std::vector<int64_t> out;
  for (const int64_t b : config.bits) {
    if (b <= max_bits) out.push_back(b);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string ce_text(const std::vector<double>& weights, std::vector<int64_t> bits) {
  std::sort(bits.begin(), bits.end());
  std::ostringstream out;
  for (size_t i = 0; i < bits.size(); ++i) {
    const double w = weights.empty() ? 0.0 : weights.size() == 1 ? weights.front() : weights[i];
    if (w > 0) out << (out.tellp() > 0 ? ", " : "") << bits[i] << " (×" << w << ")";
  }
  return out.tellp() > 0 ? ", cross-entropy to the labels at bits " + out.str() : "";
}

std::vector<double> read_per_bit_values(const po::variables_map& vm, const std::string& name,
                                        const models::StudentConfig& config, bool one_for_all) {
  if (!vm.count(name)) return {};
  const std::vector<double> values = parse_double_list(get<std::string>(vm, name.c_str()), "--" + name);
  const std::vector<int64_t>& bits = config.bits;
  if (one_for_all && values.size() == 1) return values;
  if (values.size() != bits.size()) {
    throw UsageError("--" + name + " needs one value " + (one_for_all ? "or one " : "") + "per bit-width (" +
                     std::to_string(bits.size()) + "), got " + std::to_string(values.size()));
  }
  std::vector<size_t> order(bits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return bits[x] < bits[y]; });
  std::vector<double> out;
  for (const size_t i : order) out.push_back(values[i]);
  return out;
}

BnOptions read_bn_options(const po::variables_map& vm, const models::StudentConfig& config) {
  BnOptions bn;
  bn.bits = get<std::string>(vm, "bn-reestimate") == "auto" ? low_bits(config, kBnAutoMaxBits)
                                                            : read_bit_list(vm, "bn-reestimate", config);
  const std::string text = get<std::string>(vm, "bn-mode");
  if (text == "auto") {
    for (const int64_t b : bn.bits) bn.modes.push_back(b <= 2 ? models::BnEstimate::kCenter : models::BnEstimate::kAlign);
    if (bn.modes.empty()) bn.modes.push_back(models::BnEstimate::kAlign);
    return bn;
  }
  std::vector<std::string> names;
  std::stringstream in(text);
  for (std::string name; std::getline(in, name, ',');) names.push_back(name);
  if (names.empty()) names.push_back("");
  for (const auto& name : names) {
    try {
      bn.modes.push_back(trainers::parse_bn_mode(name));  // the names' one owner
    } catch (const OptionError&) {
      throw UsageError("--bn-mode must be 'shift', 'absolute', 'align', 'center' or 'auto' (or one per "
                       "--bn-reestimate bit-width), got '" + text + "'");
    }
  }
  if (bn.modes.size() != 1 && bn.modes.size() != bn.bits.size()) {
    throw UsageError("--bn-mode gives " + std::to_string(bn.modes.size()) + " modes for " +
                     std::to_string(bn.bits.size()) + " --bn-reestimate bit-widths (give one, or one per bit-width)");
  }
  return bn;
}


void add_synth_options(po::options_description& desc, const std::string& prefix) {
  // Boost copies the names; the temporaries live until the end of the statement.
  const auto key = [&](const char* n) { return prefix + n; };
  desc.add_options()
      (key("iterations").c_str(), po::value<int64_t>()->default_value(-1),
       "optimization steps (zeroq: per batch; gdfq: generator training); -1: the recipe's")
      (key("lr").c_str(), po::value<double>()->default_value(-1), "learning rate; -1: the recipe's")
      (key("bns").c_str(), po::value<std::string>()->default_value(""), "BN-statistics loss: zeroq, genie or gdfq (default: the recipe's)")
      (key("bns-weight").c_str(), po::value<double>()->default_value(-1), "weight of the BN-statistics loss; -1: the recipe's (zsq quantize: 1 for a generator trained beside the student)")
      (key("ce-weight").c_str(), po::value<double>()->default_value(-1), "weight of the cross-entropy to the target labels; -1: the recipe's")
      (key("prior-weight").c_str(), po::value<double>()->default_value(-1), "weight of the image prior; -1: the recipe's")
      (key("margin").c_str(), po::value<double>()->default_value(-1), "DSG slack on the BN statistics, in running stds (0: off; -1: the recipe's)")
      (key("layerwise").c_str(), po::value<std::string>()->default_value(""), "DSG layerwise sample enhancement: on or off (default: the recipe's)")
      (key("lor").c_str(), po::value<std::string>()->default_value(""), "IntraQ local object reinforcement: on or off (default: the recipe's)")
      (key("soft-target").c_str(), po::value<double>()->default_value(-1), "IntraQ soft inception target floor in [0, 1) (0: off; -1: the recipe's)")
      (key("margin-low").c_str(), po::value<double>()->default_value(-2), "IntraQ marginal distance, lower bound (-1: off; -2: the recipe's)")
      (key("margin-up").c_str(), po::value<double>()->default_value(-2), "IntraQ marginal distance, upper bound (-2: the recipe's)")
      (key("superpose-prob").c_str(), po::value<double>()->default_value(-1), "Qimera: chance per generator step of superposed samples (-1: the recipe's)")
      (key("superpose-k").c_str(), po::value<int64_t>()->default_value(0), "Qimera: classes mixed per superposed sample (0: the recipe's)")
      (key("mapping").c_str(), po::value<std::string>()->default_value(""), "Qimera's disentanglement mapping layer: on or off (default: the recipe's)")
      (key("adversarial").c_str(), po::value<double>()->default_value(-1), "weight of the adversarial term (0: off; -1: the recipe's); zsq generate: against a proxy student, ramped up over the warm-up; zsq quantize online: against the student at its lowest bit-width")
      (key("student-steps").c_str(), po::value<int64_t>()->default_value(0), "adversarial: proxy-student steps per generator step (0: the recipe's)")
      (key("stride").c_str(), po::value<int64_t>()->default_value(0), "adversarial: generator steps per written batch (0: the recipe's)")
      (key("latent-dim").c_str(), po::value<int64_t>()->default_value(100), "generator noise size");
}

void read_synth_options(const po::variables_map& vm, const std::string& prefix, generators::SynthesizerOptions* out) {
  generators::SynthesizerOptions& so = *out;
  const auto flag = [&](const char* n) { return prefix + n; };
  so.iterations = get<int64_t>(vm, flag("iterations").c_str());
  so.lr = get<double>(vm, flag("lr").c_str());
  so.bns = get<std::string>(vm, flag("bns").c_str());
  so.bns_weight = get<double>(vm, flag("bns-weight").c_str());
  so.ce_weight = get<double>(vm, flag("ce-weight").c_str());
  so.prior_weight = get<double>(vm, flag("prior-weight").c_str());
  so.margin = get<double>(vm, flag("margin").c_str());
  so.latent_dim = get<int64_t>(vm, flag("latent-dim").c_str());
  so.adversarial = get<double>(vm, flag("adversarial").c_str());
  so.student_steps = get<int64_t>(vm, flag("student-steps").c_str());
  if (so.student_steps < 0) throw UsageError("--" + flag("student-steps") + " must be >= 1");
  so.stride = get<int64_t>(vm, flag("stride").c_str());
  if (so.stride < 0) throw UsageError("--" + flag("stride") + " must be >= 1");
  const std::string lor = get<std::string>(vm, flag("lor").c_str());
  if (lor != "" && lor != "on" && lor != "off") throw UsageError("--" + flag("lor") + " must be 'on' or 'off', got '" + lor + "'");
  so.lor = lor.empty() ? -1 : lor == "on" ? 1 : 0;
  so.soft_target = get<double>(vm, flag("soft-target").c_str());
  so.superpose_prob = get<double>(vm, flag("superpose-prob").c_str());
  so.superpose_k = get<int64_t>(vm, flag("superpose-k").c_str());
  const std::string mapping = get<std::string>(vm, flag("mapping").c_str());
  if (mapping != "" && mapping != "on" && mapping != "off") {
    throw UsageError("--" + flag("mapping") + " must be 'on' or 'off', got '" + mapping + "'");
  }
  so.mapping = mapping.empty() ? -1 : mapping == "on" ? 1 : 0;
  const std::string layerwise = get<std::string>(vm, flag("layerwise").c_str());
  if (layerwise != "" && layerwise != "on" && layerwise != "off") {
    throw UsageError("--" + flag("layerwise") + " must be 'on' or 'off', got '" + layerwise + "'");
  }
  so.layerwise = layerwise.empty() ? -1 : layerwise == "on" ? 1 : 0;
  so.margin_low = get<double>(vm, flag("margin-low").c_str());
  so.margin_up = get<double>(vm, flag("margin-up").c_str());
}

void check_same_recipe(const std::string& checkpoint, const std::string& stored, const std::string& now,
                       const po::variables_map& vm, const std::set<std::string>& free) {
  const auto a = config_values(stored), b = config_values(now);
  std::vector<std::string> diffs;
  for (const auto& [key, value] : b) {
    if (free.count(key)) continue;
    const auto it = a.find(key);
    if (it == a.end() && vm.count(key) && vm[key].defaulted()) continue;
    const std::string was = it == a.end() ? "(unset)" : it->second;
    if (was != value) diffs.push_back("--" + key + " " + value + " (the checkpoint has " + was + ")");
  }
  for (const auto& [key, value] : a) {
    if (!free.count(key) && !b.count(key)) diffs.push_back("--" + key + " unset (the checkpoint has " + value + ")");
  }
  if (diffs.empty()) return;
  std::string msg = "'" + checkpoint + "' was trained with another recipe; resume with the same options:";
  for (const auto& d : diffs) msg += "\n  " + d;
  throw UsageError(msg);
}

} // namespace zsq::cli
