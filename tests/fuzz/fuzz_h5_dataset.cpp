// The HDF5 data set reader (--data, --eval-data, --pool, synthetic pools).
#include "framework/data.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = zsq::fuzz::write_input(data, size, "input.h5");
  zsq::fuzz::survive([&] { zsq::load_h5_dataset(path); });
  return 0;
}
