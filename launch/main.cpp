// zsq: zero-shot, once-for-all quantization. Dispatches the sub-commands and
// turns every exception into one clear message and a non-zero exit.
#include "distributed/world.h"
#include "framework/errors.h"
#include "framework/logging.h"
#include "launch/cli.h"
#include "launch/commands.h"

#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <cstring>
#include <functional>
#include <iostream>
#include <map>

namespace {

const char* kUsage =
    "usage: zsq COMMAND [options]   (zsq COMMAND --help for the options of one command)\n"
    "\n"
    "commands:\n"
    "  train-teacher   train an FP32 teacher on a labelled data set and write teacher.h5\n"
    "  generate        synthesize training images from a teacher's BatchNorm statistics (HDF5, PNG)\n"
    "  quantize        train the once-for-all student on a pool by distillation (2/3/4/8 bits in one model)\n"
    "  ptq             zero-shot post-training quantization: block reconstruction on synthetic images, fixed models\n"
    "  init-student    build the once-for-all student from a teacher (steps calibrated) and write student.h5\n"
    "  extract         write a fixed-precision (--bits) or vertical-layered model from a student\n"
    "  eval            top-1 accuracy of a model file (FP32, fixed, vertical) or of a student per bit-width\n"
    "  inspect         print what an HDF5 file (model or data set) holds\n"
    "\n"
    "Every command takes --config FILE.ini (flags override it), --json, --threads, --log-level.\n";

// "[rank r/w] " in a job of several processes, "" otherwise.
std::string rank_prefix(const zsq::distributed::World& world) {
  if (world.world_size <= 1) return "";
  return "[rank " + std::to_string(world.rank) + "/" + std::to_string(world.world_size) + "] ";
}

} // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<int(int, char**)>> commands = {
      {"train-teacher", zsq::cli::train_teacher},
      {"eval", zsq::cli::eval},
      {"inspect", zsq::cli::inspect},
      {"init-student", zsq::cli::init_student},
      {"extract", zsq::cli::extract},
      {"generate", zsq::cli::generate},
      {"quantize", zsq::cli::quantize},
      {"ptq", zsq::cli::ptq},
  };
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    (argc < 2 ? std::cerr : std::cout) << kUsage;
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    // The LibTorch it runs on: the CPU build (Debian's 1.13) or the CUDA flavour (launch/setup-cuda).
#ifdef ZSQ_CUDA_BUILD
    const std::string flavour = "CUDA flavour, " + std::to_string(torch::cuda::device_count()) + " GPU(s) visible";
#else
    const std::string flavour = "CPU build";
#endif
    std::cout << "zsq 0.1.0 (LibTorch " << TORCH_VERSION << ", " << flavour << ")" << std::endl;
    return 0;
  }
  const std::string name = argv[1];
  const auto command = commands.find(name);
  if (command == commands.end()) {
    std::cerr << "zsq: error: unknown command '" << name << "'\n" << kUsage;
    return 2;
  }
  zsq::distributed::World world;
  int code = 1;
  try {
    world = zsq::distributed::init_world();
    zsq::set_log_rank(world.rank, world.world_size);
    code = command->second(argc - 1, argv + 1);
  } catch (const zsq::cli::UsageError& e) {
    std::cerr << rank_prefix(world) << "zsq " << name << ": error: " << e.what() << "\n(see zsq " << name << " --help)"
              << std::endl;
    code = 2;
  } catch (const zsq::OptionError& e) {  // an option value the library refused: a user error as well
    std::cerr << rank_prefix(world) << "zsq " << name << ": error: " << e.what() << "\n(see zsq " << name << " --help)"
              << std::endl;
    code = 2;
  } catch (const c10::Error& e) {
    std::cerr << rank_prefix(world) << "zsq " << name << ": error: " << e.what_without_backtrace() << std::endl;
    code = 1;
  } catch (const std::exception& e) {
    std::cerr << rank_prefix(world) << "zsq " << name << ": error: " << e.what() << std::endl;
    code = 1;
  }
  // One failed rank must not leave the others waiting in a collective.
  if (world.world_size > 1 && code != 0) zsq::distributed::abort_job(code, "zsq " + name + " failed on this rank");
  zsq::distributed::finalize_world();
  return code;
}
