// The INI recipe reader (--config FILE, sections per command) with options of every kind.
#include "launch/cli.h"
#include "tests/fuzz/fuzz_input.h"

#include <iostream>

namespace po = boost::program_options;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = zsq::fuzz::write_input(data, size, "recipe.ini");
  po::options_description desc("fuzz");
  desc.add_options()
      ("arch", po::value<std::string>()->default_value("resnet8"), "")
      ("epochs", po::value<int64_t>()->default_value(1), "")
      ("lr", po::value<double>()->default_value(0.1), "")
      ("bits", po::value<std::string>(), "")
      ("resume", po::bool_switch(), "");
  zsq::cli::add_common_options(desc);
  std::string config = "--config", file = path;
  char name[] = "zsq";
  char* argv[] = {name, config.data(), file.data(), nullptr};
  std::streambuf* quiet = std::cout.rdbuf(nullptr);  // --help in a file would print the usage
  zsq::fuzz::survive([&] {
    zsq::cli::Common common;
    const auto vm = zsq::cli::parse("train-teacher", "fuzz", desc, 3, argv, &common);
    if (vm && vm->count("bits")) zsq::cli::parse_int_list((*vm)["bits"].as<std::string>(), "--bits");
  });
  std::cout.rdbuf(quiet);
  return 0;
}
