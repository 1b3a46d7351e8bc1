// zsq extract: integer models (fixed or vertical-layered) from a student.
#include "launch/commands.h"
#include "launch/options.h"

#include "framework/model_file.h"
#include "models/extract.h"
#include "models/quant_factory.h"
#include "models/zoo.h"

#include <filesystem>
#include <iostream>

namespace zsq::cli {
namespace fs = std::filesystem;

int extract(int argc, char** argv) {
  po::options_description desc("zsq extract options");
  desc.add_options()
      ("checkpoint", po::value<std::string>(), "once-for-all student (zsq-student)")
      ("bits", po::value<int64_t>(), "extract the fixed-precision model of this bit-width; "
                                     "without it, the vertical-layered file of all of them")
      ("out", po::value<std::string>(), "file to write");
  add_common_options(desc);
  Common common;
  auto parsed = parse("extract", "zsq extract --checkpoint student.h5 [--bits 4] --out model-w4.h5", desc, argc, argv,
                      &common);
  if (!parsed) return 0;
  const po::variables_map& vm = *parsed;
  if (!vm.count("checkpoint")) throw UsageError("--checkpoint is required");
  if (!vm.count("out")) throw UsageError("--out is required");
  const std::string out = get<std::string>(vm, "out");
  check_output_folder(out);
  models::LoadedStudent student = models::load_student(get<std::string>(vm, "checkpoint"));
  ModelMeta meta = student.meta;
  meta.recipe = student.meta.recipe;
  if (vm.count("bits")) {
    const int64_t bits = get<int64_t>(vm, "bits");
    const models::Classifier model = models::extract_fixed(*student.model, student.spec, student.config, bits);
    models::save_fixed(out, model, meta, student.config, bits);
    std::cout << "extracted the " << bits << "-bit model; wrote " << out << " (" << fs::file_size(out) << " bytes)"
              << std::endl;
  } else {
    models::save_vertical(out, *student.model, student.spec, student.config, meta);
    std::cout << "extracted the vertical-layered model (bits " << models::bits_text(student.config.bits)
              << "); wrote " << out << " (" << fs::file_size(out) << " bytes)" << std::endl;
  }
  if (common.json) {
    std::cout << Json().add("command", "extract").add("out", out).add("bytes", static_cast<int64_t>(fs::file_size(out)))
                     .str()
              << std::endl;
  }
  return 0;
}

} // namespace zsq::cli
