// An image folder as a data set: one sub-folder per class, PNG files decoded with libpng and JPEG files
// with libjpeg-turbo (both fuzzed for years by OSS-Fuzz; stb_image's JPEG decoder, tried first, faulted
// on a file launch/fuzz made in seconds), kept as uint8 N×C×H×W like the IDX and HDF5 sets.
#include "framework/data.h"

#include <png.h>
#include <turbojpeg.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/torch.h>

namespace zsq {
namespace fs = std::filesystem;
namespace {

bool is_image_file(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

std::vector<fs::path> sorted_entries(const fs::path& dir, bool folders) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.') continue;  // hidden files and folders (.DS_Store, .git)
    if (folders ? entry.is_directory() : entry.is_regular_file()) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string unreadable(const fs::path& file, const std::string& why) {
  return "'" + file.string() + "' is not a readable PNG or JPEG image (" + why + ")";
}

// A PNG or JPEG file, by its signature (not its extension): size and colour from the header, pixels on demand.
class ImageFile {
 public:
  explicit ImageFile(const fs::path& file) : file_(file) {
    std::ifstream in(file, std::ios::binary);
    bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    const auto* b = reinterpret_cast<const unsigned char*>(bytes_.data());
    if (bytes_.size() >= 8 && png_sig_cmp(b, 0, 8) == 0) {
      png_image image{};
      image.version = PNG_IMAGE_VERSION;
      TORCH_CHECK(png_image_begin_read_from_memory(&image, bytes_.data(), bytes_.size()) != 0,
                  unreadable(file_, image.message));
      width_ = image.width, height_ = image.height, colour_ = (image.format & PNG_FORMAT_FLAG_COLOR) != 0;
      png_image_free(&image);
    } else if (bytes_.size() >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) {
      jpeg_ = std::unique_ptr<void, int (*)(tjhandle)>(tjInitDecompress(), tjDestroy);
      TORCH_CHECK(jpeg_ != nullptr, "libjpeg-turbo: ", tjGetErrorStr2(nullptr));
      int w = 0, h = 0, subsampling = 0, colourspace = 0;
      TORCH_CHECK(tjDecompressHeader3(jpeg_.get(), b, bytes_.size(), &w, &h, &subsampling, &colourspace) == 0,
                  unreadable(file_, tjGetErrorStr2(jpeg_.get())));
      width_ = w, height_ = h, colour_ = colourspace != TJCS_GRAY;
    } else {
      TORCH_CHECK(false, unreadable(file_, "neither a PNG nor a JPEG signature"));
    }
    // A hostile header can claim 2^31 pixels a side; a data set image is far below 32 megapixels.
    TORCH_CHECK(width_ > 0 && height_ > 0 && width_ * height_ <= (int64_t{1} << 25), "'", file_.string(), "' is ",
                width_, "x", height_, " pixels: more than the 32 megapixels an image of a data set may have");
  }
  int64_t width() const { return width_; }
  int64_t height() const { return height_; }
  int64_t stored_channels() const { return colour_ ? 3 : 1; }

  // Pixels as uint8 C×H×W, C = 1 or 3: RGB as stored (alpha dropped, as PIL's convert("RGB")), grey
  // repeated to RGB, RGB to grey by PIL's convert("L") (ITU-R 601-2 luma, 16-bit fixed point).
  torch::Tensor pixels(int64_t channels) const {
    torch::Tensor rgb = torch::zeros({height_, width_, 4}, torch::kUInt8);  // RGBA for PNG, RGB(X) for JPEG
    const auto* b = reinterpret_cast<const unsigned char*>(bytes_.data());
    if (!jpeg_) {
      png_image image{};
      image.version = PNG_IMAGE_VERSION;
      TORCH_CHECK(png_image_begin_read_from_memory(&image, bytes_.data(), bytes_.size()) != 0,
                  unreadable(file_, image.message));
      image.format = PNG_FORMAT_RGBA;
      const int ok = png_image_finish_read(&image, nullptr, rgb.data_ptr(), 0, nullptr);
      const std::string message = image.message;
      png_image_free(&image);
      TORCH_CHECK(ok != 0, unreadable(file_, message));
    } else {
      TORCH_CHECK(tjDecompress2(jpeg_.get(), b, bytes_.size(), rgb.data_ptr<uint8_t>(), int(width_), int(width_ * 4),
                                int(height_), TJPF_RGBX, 0) == 0,
                  unreadable(file_, tjGetErrorStr2(jpeg_.get())));
    }
    rgb = rgb.narrow(2, 0, 3).permute({2, 0, 1});
    if (channels == 3) return rgb.contiguous();
    if (!colour_) return rgb.narrow(0, 0, 1).contiguous();
    const torch::Tensor wide = rgb.to(torch::kInt32);
    return torch::div(wide[0] * 19595 + wide[1] * 38470 + wide[2] * 7471 + 0x8000, 65536, "floor")
        .to(torch::kUInt8)
        .unsqueeze(0);
  }

 private:
  fs::path file_;
  std::string bytes_;
  int64_t width_ = 0, height_ = 0;
  bool colour_ = false;
  std::unique_ptr<void, int (*)(tjhandle)> jpeg_{nullptr, tjDestroy};
};

} // namespace

Dataset load_image_folder(const std::string& dir, const std::vector<int64_t>& shape) {
  TORCH_CHECK(fs::is_directory(dir), "image folder '", dir, "' not found");
  TORCH_CHECK(shape.empty() || shape.size() == 3, "an image folder needs the model's input shape as C,H,W");
  TORCH_CHECK(shape.empty() || shape[0] == 1 || shape[0] == 3, "image folder '", dir,
              "': PNG and JPEG images feed 1- or 3-channel models, this model takes ", shape[0], " channels");
  const std::vector<fs::path> classes = sorted_entries(dir, true);
  TORCH_CHECK(!classes.empty(), "image folder '", dir,
              "' has no class sub-folders: put each class's PNG or JPEG files in a sub-folder of its own "
              "(labels follow the sub-folders' sorted names)");
  std::vector<std::pair<fs::path, int64_t>> files;
  for (size_t label = 0; label < classes.size(); ++label) {
    size_t found = 0;
    for (const fs::path& file : sorted_entries(classes[label], false)) {
      TORCH_CHECK(is_image_file(file), "'", file.string(), "': an image folder holds only .png, .jpg and .jpeg files");
      files.emplace_back(file, static_cast<int64_t>(label));
      ++found;
    }
    TORCH_CHECK(found > 0, "class folder '", classes[label].string(), "' has no PNG or JPEG files");
  }
  // The model's size and channels when it is known, else the first image's. The size is checked from the
  // header, before a file is decoded.
  int64_t channels = shape.empty() ? 0 : shape[0], h = shape.empty() ? 0 : shape[1], w = shape.empty() ? 0 : shape[2];
  std::vector<torch::Tensor> images;
  images.reserve(files.size());
  for (const auto& item : files) {
    const ImageFile image(item.first);
    if (channels == 0) channels = image.stored_channels(), h = image.height(), w = image.width();
    TORCH_CHECK(image.width() == w && image.height() == h, "'", item.first.string(), "' is ", image.width(), "x",
                image.height(), " pixels (width x height), ",
                shape.empty() ? "the folder's first image is " : "the model takes ", w, "x", h,
                ": resize the images first (zsq does not resize)");
    images.push_back(image.pixels(channels));
  }
  torch::Tensor labels = torch::empty({static_cast<int64_t>(files.size())}, torch::kInt64);
  for (size_t i = 0; i < files.size(); ++i) labels[static_cast<int64_t>(i)] = files[i].second;
  return {torch::stack(images), labels, dir};
}

} // namespace zsq
