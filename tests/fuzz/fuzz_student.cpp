// The student and checkpoint reader (zsq-student: shared weights, steps, per-bit BatchNorms, recipe).
#include "models/extract.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = zsq::fuzz::write_input(data, size, "student.h5");
  zsq::fuzz::survive([&] { zsq::models::load_student(path); });
  return 0;
}
