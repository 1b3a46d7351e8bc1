// zsq inspect: what a file holds.
#include "launch/commands.h"
#include "launch/options.h"

#include "framework/data.h"
#include "framework/h5.h"
#include "framework/model_file.h"
#include "models/extract.h"

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>

namespace zsq::cli {
namespace fs = std::filesystem;

int inspect(int argc, char** argv) {
  po::options_description desc("zsq inspect options");
  desc.add_options()("file", po::value<std::string>(), "HDF5 file to describe (also the first positional argument)")(
      "all", po::bool_switch(), "list every tensor (default: the first 40)");
  add_common_options(desc);
  po::positional_options_description positional;
  positional.add("file", 1);
  Common common;
  auto parsed = parse("inspect", "zsq inspect FILE.h5", desc, argc, argv, &common, &positional);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("file")) throw UsageError("give the file to inspect: zsq inspect FILE.h5");
  const std::string path = get<std::string>(vm, "file");
  const h5::File file = h5::File::open_read(path);
  const auto names = file.dataset_names();
  const auto attrs = file.attr_names();
  const std::string format = file.attr_string("format").value_or("");
  const bool is_dataset = file.has("images") && file.has("labels");
  const std::string kind = format == kModelFormat ? "model" : is_dataset ? "dataset" : format.empty() ? "tensors" : format;

  Json json;
  json.add("command", "inspect").add("file", path).add("kind", kind);
  const std::map<std::string, std::string> kinds = {
      {kModelFormat, "ZSQ FP32 model file"},
      {models::kStudentFormat, "ZSQ once-for-all student"},
      {models::kFixedFormat, "ZSQ fixed-precision integer model"},
      {models::kVerticalFormat, "ZSQ vertical-layered integer model"}};
  std::cout << path << ": " << (kinds.count(format) ? kinds.at(format) : is_dataset ? "data set" : "HDF5 file")
            << " (" << fs::file_size(path) << " bytes)\n";
  if (!attrs.empty()) std::cout << "attributes:\n";
  for (const auto& key : attrs) {
    std::string value = file.attr_as_text(key);
    const bool multi_line = value.find('\n') != std::string::npos;
    if (multi_line) {
      std::string indented;
      for (char c : value) indented += c == '\n' ? std::string("\n      ") : std::string(1, c);
      std::cout << "  " << key << ":\n      " << indented << "\n";
    } else {
      std::cout << "  " << key << " = " << value << "\n";
    }
    json.add("attr." + key, value);
  }
  int64_t elements = 0;
  const bool all = vm["all"].as<bool>();
  std::cout << "tensors (" << names.size() << "):\n";
  for (size_t i = 0; i < names.size(); ++i) {
    const auto shape = file.shape(names[i]);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    elements += n;
    if (all || i < 40) {
      std::cout << "  " << std::left << std::setw(44) << names[i] << " " << std::setw(8)
                << c10::toString(file.dtype(names[i])) << " " << c10::IntArrayRef(shape) << "\n";
    } else if (i == 40) {
      std::cout << "  ... " << names.size() - 40 << " more (--all lists them)\n";
    }
  }
  std::cout << "total elements: " << elements << "\n";
  json.add("tensors", static_cast<int64_t>(names.size())).add("elements", elements);
  if (is_dataset) {
    const Dataset data = load_h5_dataset(path);
    const torch::Tensor counts = torch::bincount(data.labels);
    std::vector<int64_t> histogram(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
    std::cout << "images: " << data.size() << " of shape " << c10::IntArrayRef(data.image_shape()) << " ("
              << c10::toString(data.images.scalar_type()) << ")\nlabel histogram: " << c10::IntArrayRef(histogram)
              << "\n";
    json.add("images", data.size()).add("label_histogram", histogram);
  }
  if (kinds.count(format)) {
    const ModelMeta meta = read_meta_attrs(file);
    json.add("arch", meta.arch).add("num_classes", meta.num_classes).add("input_shape", meta.input_shape);
  }
  std::cout << std::flush;
  if (common.json) std::cout << json.str() << std::endl;
  return 0;
}

} // namespace zsq::cli
