// The image folder reader (PNG and JPEG through stb_image), for a 1-channel 28x28 model and unconstrained.
#include "framework/data.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const bool jpeg = size > 0 && data[0] == 0xFF;  // JPEG's first byte; anything else goes in as a .png
  zsq::fuzz::write_input(data, size, "images/class0/x.png");
  const std::string dir = zsq::fuzz::scratch() + "/images";
  std::filesystem::rename(dir + "/class0/x.png", dir + (jpeg ? "/class0/x.jpg" : "/class0/x.png"));
  zsq::fuzz::survive([&] { zsq::load_image_folder(dir, {1, 28, 28}); });
  zsq::fuzz::survive([&] { zsq::load_image_folder(dir); });
  std::filesystem::remove_all(dir);
  return 0;
}
