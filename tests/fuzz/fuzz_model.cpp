// The model file reader (teachers, fixed and vertical-layered models): attributes, architecture, tensors.
#include "tests/fuzz/fuzz_input.h"
#include "trainers/evaluate.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = zsq::fuzz::write_input(data, size, "model.h5");
  zsq::fuzz::survive([&] { zsq::trainers::load_model(path); });
  return 0;
}
