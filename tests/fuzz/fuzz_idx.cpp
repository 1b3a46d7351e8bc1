// The IDX reader (Fashion-MNIST files, gzip or plain).
#include "framework/data.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = zsq::fuzz::write_input(data, size, "input.idx");
  zsq::fuzz::survive([&] { zsq::read_idx(path); });
  return 0;
}
